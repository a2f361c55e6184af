"""Model bundle: the manifest schema (shared with model_export) and loading with hash verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
Precision = Literal["fp32", "fp16", "int8"]
RuntimeName = Literal["onnxruntime", "openvino"]


def _monotone(v: tuple[float, ...]) -> tuple[float, ...]:
    # a span with a higher logit has a lower null margin: c <= 0 keeps its score from dropping below a lower span's
    if len(v) == 3 and v[2] > 0:
        raise ValueError("the null margin's weight c must be <= 0, or scores would not follow the ranking")
    return v


# Platt (a, b) on the log-odds of a span's share, and optionally c on the null margin (app.engine.spans); the
# build checks a fit against these types before it ships one
ScoreCalibration = Annotated[
    tuple[FiniteFloat, FiniteFloat] | tuple[FiniteFloat, FiniteFloat, FiniteFloat], AfterValidator(_monotone)
]


class ScoreMapSpec(BaseModel):
    """How logits become probabilities (app.engine.spans.ScoreMap), fitted on held-out questions by model_export:
    `kind` and `params` map the span candidates, `null` = (alpha, beta) gives P(no answer) from the null margin."""

    model_config = ConfigDict(extra="allow")  # the fit's record (data, figures) travels with it

    kind: Literal["identity", "temperature", "platt"]
    params: tuple[FiniteFloat, ...] = ()
    null: tuple[FiniteFloat, FiniteFloat] = (1.0, 0.0)

    @model_validator(mode="after")
    def _check(self) -> ScoreMapSpec:
        want = {"identity": (0,), "temperature": (1,), "platt": (2, 3)}[self.kind]
        if len(self.params) not in want:
            raise ValueError(
                f"a {self.kind} map takes {' or '.join(map(str, want))} parameters, not {len(self.params)}"
            )
        if self.kind == "temperature" and self.params[0] <= 0:
            raise ValueError("a temperature must be > 0")
        if self.kind == "platt":
            _monotone(self.params)
            if self.params[0] <= 0:
                raise ValueError("Platt's slope a must be > 0, or scores would run against the ranking")
        return self


class BundleError(RuntimeError):
    """The bundle cannot be served; the message says why."""


class FileEntry(BaseModel):
    sha256: str
    bytes: int
    precision: Precision | None = None  # ONNX files only
    # ONNX files: the runtime the file was built and validated for; None (and older bundles) = ONNX Runtime
    runtime: RuntimeName | None = None


class Score(BaseModel):
    dataset: str
    split: str
    n: int
    metric: Literal["korquad", "squad"]
    variant: str
    exact_match: float
    f1: float


class Manifest(BaseModel):
    """Everything the service needs to serve a bundle; written by model_export."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    name: str
    languages: list[str]
    base_model: str
    max_seq_length: int = Field(gt=8)
    doc_stride: int = Field(ge=0)
    max_query_length: int = Field(gt=0)
    input_names: list[str]
    output_names: list[str] = ["start_logits", "end_logits"]
    tokenizer: str = "tokenizer.json"
    variants: dict[str, str]  # precision -> ONNX file name
    files: dict[str, FileEntry]
    trim_suffixes: list[str] = []  # cut from span ends at decoding; learned on the training split
    # fitted on held-out articles (model_export build, or bundle --calibrate-data); the defaults change nothing
    score_calibration: ScoreCalibration = (1.0, 0.0)
    null_threshold: FiniteFloat = 0.0
    # the joint map of answers and no-answer; when absent, the two legacy fields above stand in for it
    score_map: ScoreMapSpec | None = None
    calibration: dict[str, object] = {}
    scores: list[Score] = []
    validation: dict[str, object] = {}
    training: dict[str, object] = {}
    command: str = ""
    created: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path, precision: Precision | None = None, runtime: RuntimeName | None = None) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size, precision=precision, runtime=runtime)


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST}; is this a model bundle made by model_export?")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as e:
        raise BundleError(f"{path}: invalid manifest: {e}") from e
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.format_version}, this service reads {FORMAT_VERSION}")
    return manifest


def verify_bundle(bundle_dir: Path, needed: list[str] | None = None) -> Manifest:
    """Check that the files the service will use exist and match their manifest hashes."""
    manifest = read_manifest(bundle_dir)
    for name in needed if needed is not None else list(manifest.files):
        entry = manifest.files.get(name)
        if entry is None:
            raise BundleError(f"{bundle_dir}: {name} is not listed in {MANIFEST}")
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: {size} bytes, manifest says {entry.bytes}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"{path}: sha256 {digest[:12]}..., manifest says {entry.sha256[:12]}...")
    return manifest
