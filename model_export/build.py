"""`build`: the whole job from one TOML config, from a base encoder to the shipped bundle.

import -> train -> prune -> trim rules -> export, quantize, validate -> staged bundle -> calibrate (the shipped
model on its own served scores of articles it never trained on) -> score every variant on the test split -> the
shipped bundle -> its calibration figures on the test split. Each stage reuses what an earlier run of the same
config left in work_dir (the base, a finished training, the calibration's logits of the same served file), so a
build stopped between sittings goes on.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.engine.bundle import read_manifest
from app.engine.hardware import cpu_flags, cpu_name, pick_variant
from app.settings import cpu_quota
from model_export.bundle import BUNDLE_FILE_NAMES, rewrite_manifest, write_bundle
from model_export.calibrate import fit_bundle, measure_bundle
from model_export.checkpoint import load_tokenizer, training_record
from model_export.config import BuildConfig, BuildStage, TrainConfig, check_splits
from model_export.data import Example, load_examples
from model_export.export import load_qa_model
from model_export.import_base import import_encoder
from model_export.prune_vocab import PruneSpec, prune
from model_export.stages import (
    calibration_fields,
    evaluate_stage,
    export_and_validate,
    int8_description,
    set_calibration,
    variant_runtimes,
)
from model_export.suffixes import learn_trim_suffixes
from model_export.train import train

log = logging.getLogger(__name__)


def build(cfg: BuildConfig, command: str, until: BuildStage | None = None) -> Path:
    """See the module's docstring. `until` stops after that stage and returns what it wrote; the same call without
    it goes on from there."""
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

    exp = cfg.export
    made, info, report = serving_files_stage(cfg, model_dir, work / "onnx", exp.variants, train_examples)
    common = bundle_fields(cfg, model_dir, info, report, command)
    manifest_extra: dict[str, Any] = {
        "trim_suffixes": trim,
        "vocabulary_pruning": prune_report,
        "int8_method": int8_description(exp),
    }
    # every variant, as the service would load them: calibration runs the shipped file, then scoring each variant
    staged = write_bundle(
        work / "bundle-all", onnx_files={v: made[v] for v in exp.variants}, extra=manifest_extra, **common
    )
    if cfg.calibrate.enabled:
        manifest_extra |= calibrate_stage(cfg, staged)
    if until == "calibrate":
        return stop_after(until, work / "calibrate" / "calibration.json")

    bundle = ship_stage(cfg, staged, made, common, manifest_extra)
    if cfg.calibrate.enabled:
        calibration_test_stage(bundle, cfg.data.file, cfg.data.test_articles, work / "calibration-test")
    return bundle


def stop_after(stage: BuildStage, out: Path) -> Path:
    log.info(
        "stopped after %s as asked (--until), before anything ran on the test split; without it, the build goes on",
        stage,
    )
    return out


def calibrate_stage(cfg: BuildConfig, staged: Path) -> dict[str, Any]:
    """The shipped model's score map, fitted on its own served scores of `calibrate.dev_articles` (never trained
    on: check_splits) through the file the CPU service will pick from the shipped variants, one window per call.
    Records it in the staged bundle, writes work_dir/calibrate/calibration.json (the manifest fields) and returns
    those fields. Its logits are cached there (served_logits.npz), reused while the served file is the same."""
    c = cfg.calibrate
    work = Path(cfg.work_dir) / "calibrate"
    shipped = {v: BUNDLE_FILE_NAMES[v] for v in cfg.export.shipped}
    # the staged bundle holds every variant built; the file to calibrate is the one the shipped bundle serves
    variant = pick_variant(shipped, "auto", False, cpu_flags()).name
    record, spec = fit_bundle(
        staged, cfg.data.file, c.dev_articles, work, cfg.evaluate.threads or cpu_quota(), c.metric, variant
    )
    fields = calibration_fields(record, spec)  # a fit the manifest would refuse stops the build here
    set_calibration(staged, fields)  # the staged bundle then scores as the shipped one will
    work.mkdir(parents=True, exist_ok=True)
    (work / "calibration.json").write_text(json.dumps(fields, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return fields


def ship_stage(
    cfg: BuildConfig,
    staged: Path,
    made: dict[str, Path],
    common: dict[str, Any],
    manifest_extra: dict[str, Any],
) -> Path:
    """Score every variant of the staged bundle on the test split (the files and code path the service will use),
    then write the bundle of the shipped ones, with every score on record."""
    work, exp, ev = Path(cfg.work_dir), cfg.export, cfg.evaluate
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
    """What every bundle of a build records, the staged one and the shipped one."""
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
    """Fine-tune on the training articles in work_dir/train: a finished model there is reused (delete it to
    retrain; train() renames final/ into place only once it is whole), an interrupted one resumes."""
    train_dir = Path(cfg.work_dir) / "train"
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
            train_articles=cfg.data.train_articles,
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


def prune_stage(cfg: BuildConfig, model_dir: Path, train_examples: Sequence[Example]) -> tuple[Path, dict[str, Any]]:
    """Keep the vocabulary pieces Korean, English, digits and punctuation need (the same pieces for the same
    examples, whichever model of the base), and measure what it costs on the test split's text and English."""
    p = cfg.prune
    spec = PruneSpec(ascii_top=p.ascii_top, latin_top=p.latin_top, other_top=p.other_top)
    train_texts = list(dict.fromkeys([e.context for e in train_examples] + [e.question for e in train_examples]))
    test = load_examples(cfg.data.file, cfg.data.test_articles)
    samples = {
        "korquad_test_split": list(dict.fromkeys([e.context for e in test] + [e.question for e in test])),
        "english_package_docs": english_sample(),
    }
    out = Path(cfg.work_dir) / "pruned"
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


# ---------------------------------------------------------------- serving files


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
