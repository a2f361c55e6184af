"""The stages both pipelines share (`build` from a base encoder, `bundle` from a QA checkpoint): export ->
quantize -> validate against PyTorch -> score each variant, and the manifest fields a calibration sets."""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import FiniteFloat, TypeAdapter, ValidationError

from app.engine.bundle import Manifest, RuntimeName, Score, ScoreCalibration, ScoreMapSpec, read_manifest
from app.engine.windows import PairTokenizer, WindowSpec, encode_windows, pad_batch, pad_token_id
from model_export.bundle import BUNDLE_FILE_NAMES, rewrite_manifest
from model_export.checkpoint import ExportError, load_fast_tokenizer, save_backend_tokenizer
from model_export.config import ExportSection
from model_export.data import Example, load_examples
from model_export.evaluate import evaluate_predictor, manifest_scores, open_predictor
from model_export.export import export_all, read_export_info
from model_export.quantize import quantize_int8, quantize_static, smooth_activations
from model_export.validate import parse_tolerances, validate

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "int8")


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this process was started, as someone would retype it (argv: the CLI's arguments, default sys.argv)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python -m model_export", *(shlex.quote(a) for a in args)])


def variant_runtimes(exp: ExportSection) -> dict[str, RuntimeName]:
    """Variants built for a runtime other than ONNX Runtime: static int8 is a QDQ graph for OpenVINO."""
    return {"int8": "openvino"} if exp.int8_method == "static" else {}


def static_int8_available() -> bool:
    """Whether static int8 can be built and served here: NNCF quantizes, OpenVINO runs (found, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("nncf", "openvino"))


def int8_description(exp: ExportSection) -> str:
    smoothed = exp.int8_method == "dynamic" and exp.smooth_alpha
    return exp.int8_method + (f", SmoothQuant alpha {exp.smooth_alpha}" if smoothed else "")


def export_stage(
    source: str | Path, onnx_dir: Path, variants: Sequence[str], opset: int | None = None, model: Any = None
) -> tuple[dict[str, Path], dict[str, Any]]:
    """optimum export -> fused fp32 (CPU and CUDA) [-> fp16 for CUDA]; returns the files and export.json."""
    log.info("export: %s -> %s", source, onnx_dir)
    made = export_all(source, onnx_dir, fp16="fp16" in variants, opset=opset, model=model)
    return made, read_export_info(onnx_dir)


def export_and_validate(
    source: str | Path,
    model: Any,
    tokenizer: PairTokenizer,
    onnx_dir: Path,
    variants: Sequence[str],
    exp: ExportSection,
    windows: WindowSpec,
    calibration_pairs: Sequence[tuple[str, str]],
    validation_pairs: Sequence[tuple[str, str]] | None,
    tolerances: dict[str, dict[str, float]] | None,
) -> tuple[dict[str, Path], dict[str, Any], dict[str, Any]]:
    """export -> int8 (activation scales from windows of `calibration_pairs`) -> every variant validated against
    PyTorch on the runtime that will serve it (`validation_pairs`, or the built-in samples when None)."""
    made, info = export_stage(source, onnx_dir, variants, exp.opset, model)
    if "int8" in variants:
        made["int8"] = quantize_stage(onnx_dir, made["fp32"], exp, tokenizer, calibration_pairs, windows)
    files = {v: made[v] for v in variants}
    report = validate_stage(
        model,
        tokenizer,
        files,
        info,
        windows,
        pairs=validation_pairs,
        tolerances=tolerances,
        report_path=onnx_dir / "validation.json",
        runtimes=variant_runtimes(exp),
    )
    return files, info, report


def quantize_stage(
    onnx_dir: Path,
    fp32: Path,
    exp: ExportSection,
    tokenizer: PairTokenizer | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    windows: WindowSpec | None = None,
) -> Path:
    """int8 for the CPU, calibrated on windows of `pairs`: static (QDQ for OpenVINO, fastest and most faithful)
    or dynamic (ORT's MatMulInteger, smoothed first)."""
    dst = onnx_dir / "model.int8.onnx"
    raw = onnx_dir / "model.raw.onnx"  # unfused: fused contrib nodes hide their MatMuls from quantizers
    feeds: list[dict[str, np.ndarray]] = []
    if pairs and tokenizer is not None and windows is not None:
        wins = [w for ws in encode_windows(tokenizer, pairs, windows) for w in ws][: exp.calibration_windows]
        feeds = [pad_batch([w], pad_token_id(tokenizer)) for w in wins]
    if exp.int8_method == "static":
        return quantize_static(raw, dst, feeds)
    if exp.smooth_alpha and feeds:
        fp32 = smooth_activations(fp32, onnx_dir / "model.smooth.onnx", feeds, exp.smooth_alpha)
    return quantize_int8(fp32, dst, exp.per_channel, exp.quantize_embeddings)


def validate_stage(
    model: Any,
    tokenizer: PairTokenizer,
    files: dict[str, Path],
    info: dict[str, Any],
    windows: WindowSpec,
    pairs: Sequence[tuple[str, str]] | None = None,
    tolerances: dict[str, dict[str, float]] | None = None,
    report_path: Path | None = None,
    runtimes: dict[str, RuntimeName] | None = None,
) -> dict[str, Any]:
    """Every variant against PyTorch on padded batches of real windows; raises ValidationFailed with the numbers."""
    report = validate(
        model,
        files,
        list(info["input_names"]),
        list(info["output_names"]),
        windows,
        pairs=pairs,
        tolerances=parse_tolerances(tolerances),
        tokenizer=tokenizer,
        runtimes=runtimes,
    )
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2))
    return report


def validate_export(
    model: str,
    onnx_dir: Path,
    variants: Sequence[str],
    windows: WindowSpec,
    data: str | None = None,
    articles: str | None = None,
    max_examples: int = 16,
    tolerances: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """`validate`: the variants of an `export` output dir against the checkpoint they came from, on questions of
    `data` (else the built-in samples); writes tokenizer.json and validation.json beside them."""
    info = read_export_info(onnx_dir)
    files = {p: onnx_dir / n for p, n in BUNDLE_FILE_NAMES.items() if (onnx_dir / n).is_file() and p in variants}
    pairs = None
    if data:
        pairs = [(e.question, e.context) for e in load_examples(data, articles)[:max_examples]]
    tokenizer = save_backend_tokenizer(load_fast_tokenizer(model), onnx_dir / "tokenizer.json")
    return validate_stage(
        model, tokenizer, files, info, windows, pairs, tolerances, report_path=onnx_dir / "validation.json"
    )


def evaluate_stage(
    bundle_dir: Path,
    variants: Sequence[str],
    examples: list[Example],
    dataset: str,
    split: str,
    out_root: Path,
    batch_size: int = 32,
    max_answer_length: int = 30,
    threads: int | None = None,
    meta: dict[str, Any] | None = None,
    speeds: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Score each variant of a bundle through the service's own engine (KorQuAD and SQuAD metrics); with
    `speeds`, also record each variant's questions per second there (tokenizing, engine and decoding)."""
    scores: list[dict[str, Any]] = []
    for variant in variants:
        predictor, chosen = open_predictor(str(bundle_dir), variant, batch_size, threads)
        result = evaluate_predictor(
            predictor,
            examples,
            out_root / f"eval-{chosen}",
            max_answer_length,
            meta={**(meta or {}), "variant": chosen},
        )
        log.info("%s: %s", chosen, {m: result[m] for m in ("korquad", "squad") if m in result})
        if speeds is not None:
            speeds[chosen] = {
                "questions_per_second": result["questions_per_second"],
                "questions": result["n"],
                "served_by": getattr(predictor, "served_by", ""),
            }
        scores += [s.model_dump() for s in manifest_scores(result, dataset, split)]
    return scores


def set_scores(bundle_dir: Path, scores: Sequence[Score | dict[str, Any]]) -> Manifest:
    """Record scores in a written bundle's manifest (scores are not files, so no hash changes)."""
    manifest = read_manifest(bundle_dir)
    manifest.scores = [s if isinstance(s, Score) else Score.model_validate(s) for s in scores]
    rewrite_manifest(bundle_dir, manifest)
    return manifest


def set_calibration(bundle_dir: Path, fields: dict[str, Any]) -> Manifest:
    """Record a fitted calibration (`calibration_fields`) in a written bundle's manifest, atomically; no file
    changes, so its hashes still hold. A test-split measurement of an earlier map (`calibration_test`) is dropped:
    it no longer describes the bundle's scores."""
    raw = read_manifest(bundle_dir).model_dump()
    if raw.pop("calibration_test", None) is not None:
        log.info("%s: calibration_test measured the previous map; dropped", bundle_dir)
    manifest = Manifest.model_validate(raw | fields)
    rewrite_manifest(bundle_dir, manifest)
    return manifest


def calibration_fields(record: dict[str, Any], score_map: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest fields a fitted calibration sets: `score_map` (when given), the legacy `score_calibration` and
    `null_threshold` the record carries for servers from before it, and the record itself. Raises ExportError on a
    fit the manifest would refuse: not finite (a model that never answers its held-out questions), or scores
    against the ranking."""
    try:
        fitted = {
            "score_calibration": TypeAdapter(ScoreCalibration).validate_python(tuple(record["score_calibration"])),
            "null_threshold": TypeAdapter(FiniteFloat).validate_python(record["null_threshold"]),
        }
        if score_map is not None:
            fitted = {"score_map": ScoreMapSpec.model_validate(score_map).model_dump()} | fitted
    except ValidationError as e:
        raise ExportError(f"calibration failed; does the model answer at all? {e}\nrecord: {record}") from e
    return fitted | {"calibration": record}
