"""`build`: the whole job from one TOML config, from a base encoder to the shipped bundle.

import -> train -> prune -> trim rules -> calibrate -> export -> quantize -> validate -> score -> bundle. Each
stage reuses what an earlier run of the same config left in work_dir, so a build stopped between sittings goes on.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.engine.bundle import MANIFEST, read_manifest
from app.engine.hardware import cpu_name
from app.settings import cpu_quota
from model_export.bundle import rewrite_manifest, write_bundle
from model_export.calibrate import fit_from_logits, measure_bundle
from model_export.checkpoint import load_tokenizer, training_record
from model_export.config import BuildConfig, BuildStage, TrainConfig, check_splits, fold_splits
from model_export.data import Example, load_examples
from model_export.export import load_qa_model
from model_export.held_out import ServedBundle, calibration_questions, checkpoint_logits, write_dev_logits
from model_export.import_base import import_encoder
from model_export.prune_vocab import PruneSpec, prune
from model_export.stages import (
    calibration_fields,
    evaluate_stage,
    export_and_validate,
    int8_description,
    variant_runtimes,
)
from model_export.suffixes import learn_trim_suffixes
from model_export.train import train

log = logging.getLogger(__name__)


def build(cfg: BuildConfig, command: str, until: BuildStage | None = None) -> Path:
    """import -> train -> prune -> calibrate -> export -> quantize -> validate -> evaluate each variant -> bundle.

    `until` stops after that stage and returns what it wrote; the same call without it goes on from there."""
    check_splits(cfg)
    work = Path(cfg.work_dir)
    base_dir = work / "base"
    if (base_dir / "config.json").is_file():
        log.info("base: reusing %s", base_dir)
    else:
        log.info("base: importing %s", cfg.base)
        b = cfg.base
        import_encoder(base_dir, b.kind, b.variant, Path(b.path) if b.path else None)

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

    manifest_extra: dict[str, Any] = {
        "trim_suffixes": trim,
        "vocabulary_pruning": prune_report,
        "int8_method": int8_description(cfg.export),
    }
    if calibration is not None:
        manifest_extra |= calibration_fields(calibration)
    bundle = ship_stage(cfg, model_dir, train_examples, manifest_extra, command)
    if cfg.calibrate.enabled:
        calibration_test_stage(bundle, cfg.data.file, cfg.data.test_articles, work / "calibration-test")
    return bundle


def stop_after(stage: BuildStage, out: Path) -> Path:
    log.info(
        "stopped after %s as asked (--until), before anything ran on the test split; without it, the build goes on",
        stage,
    )
    return out


def ship_stage(
    cfg: BuildConfig, model_dir: Path, train_examples: list[Example], manifest_extra: dict[str, Any], command: str
) -> Path:
    """Export, quantize and validate every variant, score each from a staged bundle of all of them (the files and
    code path the service will use), then write the bundle of the shipped ones, with every score on record."""
    work, exp, ev = Path(cfg.work_dir), cfg.export, cfg.evaluate
    made, info, report = serving_files_stage(cfg, model_dir, work / "onnx", exp.variants, train_examples)
    common = bundle_fields(cfg, model_dir, info, report, command)
    staged = write_bundle(
        work / "bundle-all", onnx_files={v: made[v] for v in exp.variants}, extra=manifest_extra, **common
    )
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
    return write_bundle(
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
    result = measure_bundle(bundle, data, articles, out)
    manifest = read_manifest(bundle)
    extra = manifest.model_extra or {}
    extra["calibration_test"] = result
    rewrite_manifest(bundle, manifest)
    return result


# ---------------------------------------------------------------- train / prune / decode rules


def train_stage(cfg: BuildConfig, base_dir: Path) -> Path:
    """Fine-tune on the training articles (or resume, or reuse a finished run); returns the final checkpoint dir."""
    return train_recipe(cfg, base_dir, cfg.data.train_articles, Path(cfg.work_dir) / "train")


def train_recipe(cfg: BuildConfig, base_dir: Path, articles: str, train_dir: Path) -> Path:
    """The config's recipe trained on `articles` in `train_dir`: a finished model there is reused (delete it to
    retrain; train() renames final/ into place only once it is whole), an interrupted one resumes."""
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
    out: list[str] = []
    for pkg in ("transformers", "numpy", "fastapi", "pydantic", "torch", "onnxruntime", "tokenizers", "uvicorn"):
        try:
            body = importlib.metadata.metadata(pkg).get_payload() or ""  # type: ignore[attr-defined]
        except importlib.metadata.PackageNotFoundError:
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
    rules = learn_trim_suffixes(load_tokenizer(model_dir), train_examples, cfg.windows.spec, cfg.decode.min_count)
    log.info("trim suffixes learned on the training split: %s", [(r.suffix, r.fixes, r.breaks) for r in rules])
    return [r.suffix for r in rules]


# ---------------------------------------------------------------- calibration: same-recipe models, held out


def calibrate_stage(cfg: BuildConfig, base_dir: Path, model_dir: Path, trim: Sequence[str]) -> dict[str, Any]:
    """Platt calibration and the null threshold from same-recipe models, each scoring only articles it never
    saw: one model without the dev slice, or one per fold (`calibrate.folds`)."""
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
    tokenizer = load_tokenizer(model_dir)
    record, _ = fit_from_logits(parts, cfg.data.file, tokenizer, cfg.windows.spec, trim, c.margin, c.metric)
    record["logits"] = c.logits
    log.info("calibration: %s", record)
    calibration_fields(record)  # refused here, not after the export's minutes
    # read before the build goes on, e.g. to choose calibrate.margin from the cross-fitted figures (model card)
    work.mkdir(parents=True, exist_ok=True)
    (work / "calibration.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


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
        return write_dev_logits(lambda exs: checkpoint_logits(fit_model, exs, cfg.windows.spec), dev, logits)
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


def serving_files_stage(
    cfg: BuildConfig, model_dir: Path, onnx_dir: Path, variants: Sequence[str], train_examples: Sequence[Example]
) -> tuple[dict[str, Path], dict[str, Any], dict[str, Any]]:
    """Export `variants` of a checkpoint, quantize, and validate each against PyTorch; returns the files, the
    export info and the validation report. Both come from the checkpoint's training examples, never from test:
    the first ones validate, and int8's activation scales come from windows of the rest."""
    n_val = cfg.validate_.max_examples
    return export_and_validate(
        model_dir,
        load_qa_model(model_dir),
        load_tokenizer(model_dir),
        onnx_dir,
        variants,
        cfg.export,
        cfg.windows.spec,
        calibration_pairs=[(e.question, e.context) for e in train_examples[n_val::17]],
        validation_pairs=[(e.question, e.context) for e in train_examples[:n_val]],
        tolerances=cfg.validate_.tolerance_overrides(),
    )
