"""`bundle`: a fine-tuned Hugging Face QA checkpoint (any architecture optimum exports) -> a bundle the service
loads as it is.

Open the checkpoint (model, fast tokenizer, windows) -> export -> fusions -> fp16 / int8 -> validate every variant
against PyTorch -> bundle [-> its score map, fitted on its own served scores of questions it never trained on]
[-> score each variant with the service's engine].
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer

from app.engine.windows import WindowSpec
from model_export.bundle import BUNDLE_FILE_NAMES, write_bundle
from model_export.calibrate import calibration_questions, fit_bundle, trained_on
from model_export.checkpoint import (
    ExportError,
    check_windows,
    default_windows,
    load_fast_tokenizer,
    save_backend_tokenizer,
    training_record,
)
from model_export.config import ExportSection
from model_export.data import ArticleRangeError, Example, article_count, cross_article_pairs, load_examples
from model_export.export import load_qa_model
from model_export.metrics import CALIBRATION_METRIC, Metric
from model_export.stages import (
    VARIANTS,
    calibration_fields,
    command_line,
    evaluate_stage,
    export_and_validate,
    int8_description,
    set_scores,
    variant_runtimes,
)
from model_export.validate import SAMPLE_PAIRS

log = logging.getLogger(__name__)


class CalibrationData(NamedTuple):
    """Questions a model never trained on, to fit its score map on."""

    data: Path
    articles: str
    examples: list[Example]
    metric: Metric = CALIBRATION_METRIC  # whose exact match makes a top answer right


class EvalData(NamedTuple):
    """Questions to score every variant on, recorded in the manifest."""

    data: Path
    articles: str | None = None  # default all
    max_examples: int | None = None  # default all


@dataclass(frozen=True)
class BundleOptions:
    """What `bundle` takes besides the checkpoint and the bundle directory: its flags, as values."""

    work_dir: Path | None = None  # intermediate files; default OUT.work beside the bundle
    variants: Sequence[str] = VARIANTS
    export: ExportSection | None = None  # int8 method, opset, size budget (its variants are `variants`)
    windows: dict[str, int | None] = field(default_factory=dict)  # set ones win over the checkpoint's
    tolerances: dict[str, dict[str, float]] | None = None  # validation bounds by variant
    name: str | None = None  # default: the checkpoint directory's name
    languages: Sequence[str] = ()
    base_model: str | None = None  # default: the checkpoint
    trim_suffixes: Sequence[str] = ()
    calibration: CalibrationData | None = None
    evaluation: EvalData | None = None
    threads: int | None = None  # calibration and scoring; default the CPU quota
    local_files_only: bool = False
    command: str | None = None  # recorded in the manifest; default this process's command line


class Checkpoint(NamedTuple):
    """A checkpoint opened for bundling: its model, its tokenizer as the bundle ships it, and its windows."""

    source: str | Path
    local: Path | None  # the directory, unless it is a hub id
    model: Any  # transformers *ForQuestionAnswering, eval mode
    tokenizer_class: str
    backend: Tokenizer  # the bundle's tokenizer.json
    tokenizer_file: Path
    windows: WindowSpec
    training: dict[str, Any]  # its training.json, if it has one


def bundle_checkpoint(source: str | Path, out_dir: Path, options: BundleOptions | None = None) -> Path:
    """A fine-tuned QA checkpoint (local dir or hub id) -> a bundle the service loads as it is; see the module's
    docstring. Raises ExportError or ValidationFailed with what to do."""
    opts = options or BundleOptions()
    out_dir = Path(out_dir)
    work = Path(opts.work_dir) if opts.work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    bad = [v for v in opts.variants if v not in VARIANTS]
    if bad or not opts.variants:
        raise ExportError(f"variants {list(opts.variants)}: choose from {list(VARIANTS)}")
    exp = (opts.export or ExportSection()).model_copy(update={"variants": list(opts.variants), "bundle_variants": None})

    ckpt = load_checkpoint(source, work, opts.windows, opts.local_files_only)
    files, info, report = export_and_validate(
        source,
        ckpt.model,
        ckpt.backend,
        work / "onnx",
        opts.variants,
        exp,
        ckpt.windows,
        # a user's checkpoint comes without training data: the validation samples calibrate int8
        calibration_pairs=SAMPLE_PAIRS,
        validation_pairs=None,
        tolerances=opts.tolerances,
    )
    extra: dict[str, Any] = {
        "trim_suffixes": list(opts.trim_suffixes),
        "int8_method": int8_description(exp) if "int8" in opts.variants else None,
        "model_type": info["model_type"],
        "tokenizer_class": ckpt.tokenizer_class,
        "exporter": info.get("exporter"),
        "fused_operators": info.get("fused_operators", {}),
    }
    write = bundle_writer(ckpt, opts, exp, files, info, report)
    if opts.calibration is not None:
        # fitted on a staged copy, so that a calibration that fails or is stopped leaves no uncalibrated bundle
        staged = write(work / "staged", extra=extra)
        extra |= calibrate_bundle(staged, opts.calibration, work / "calibrate", opts.threads)
    bundle = write(out_dir, extra=extra)
    if opts.evaluation is not None:
        score_bundle(bundle, [v for v in opts.variants if v in BUNDLE_FILE_NAMES], opts.evaluation, work, opts.threads)
    return bundle


def bundle_writer(
    ckpt: Checkpoint,
    opts: BundleOptions,
    exp: ExportSection,
    files: dict[str, Path],
    info: dict[str, Any],
    report: dict[str, Any],
) -> Callable[..., Path]:
    """write_bundle(out_dir, extra=...) with everything else the checkpoint's bundle records filled in."""
    source, local = ckpt.source, ckpt.local
    return partial(
        write_bundle,
        onnx_files=files,
        tokenizer=ckpt.tokenizer_file,
        name=opts.name or (local.resolve().name if local is not None else str(source).replace("/", "--")),
        languages=list(opts.languages),
        base_model=opts.base_model or str(source),
        max_seq_length=ckpt.windows.max_seq_length,
        doc_stride=ckpt.windows.doc_stride,
        max_query_length=ckpt.windows.max_query_length,
        input_names=list(info["input_names"]),
        output_names=list(info["output_names"]),
        validation=report,
        training=ckpt.training,
        command=opts.command if opts.command is not None else command_line(),
        max_bytes=int(exp.max_bundle_mb * 2**20) if exp.max_bundle_mb else None,
        runtimes=variant_runtimes(exp),
    )


def load_checkpoint(
    source: str | Path, work: Path, window_flags: dict[str, int | None], local_files_only: bool
) -> Checkpoint:
    """Load the model and its fast tokenizer, save the tokenizer the bundle ships (work/tokenizer.json) and settle
    the windows (flags, else its training.json, else what the model takes); ExportError says what is wrong."""
    model = load_qa_model(source, local_files_only=local_files_only)
    tokenizer = load_fast_tokenizer(source, local_files_only=local_files_only)
    local = Path(source) if Path(source).is_dir() else None
    training = training_record(local) if local is not None else {}
    windows = default_windows(model.config, tokenizer, training, window_flags)
    tokenizer_file = work / "tokenizer.json"
    backend = save_backend_tokenizer(tokenizer, tokenizer_file)
    check_windows(windows, backend)
    if local is not None:
        warn_if_tokenizer_file_differs(local / "tokenizer.json", backend)
    log.info("windows: %s; tokenizer %s", windows, type(tokenizer).__name__)
    return Checkpoint(source, local, model, type(tokenizer).__name__, backend, tokenizer_file, windows, training)


def warn_if_tokenizer_file_differs(path: Path, backend: Tokenizer) -> None:
    """transformers may rebuild a tokenizer from tokenizer_config.json (do_lower_case, ...); say so when it tokenizes
    differently from the checkpoint's tokenizer.json, since the bundle follows transformers (as fine-tuning did)."""
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


def score_bundle(bundle: Path, variants: list[str], evaluation: EvalData, work: Path, threads: int | None) -> None:
    """Score each variant on the evaluation questions and record the scores in the manifest."""
    examples = load_examples(str(evaluation.data), evaluation.articles)
    if evaluation.max_examples:
        examples = examples[: evaluation.max_examples]
    split = f"articles {evaluation.articles or 'all'}" + (f", first {len(examples)}" if evaluation.max_examples else "")
    meta = {"data": str(evaluation.data), "articles": evaluation.articles}
    scores = evaluate_stage(bundle, variants, examples, evaluation.data.stem, split, work, threads=threads, meta=meta)
    set_scores(bundle, scores)


def calibration_data(
    data: Path, articles: str | None, metric: Metric | None = None, training: dict[str, Any] | None = None
) -> CalibrationData:
    """The answerable questions of `articles` of a SQuAD-format file; ValueError, saying why, when they cannot
    calibrate: calibration pairs each question with another article's paragraph, so two articles are needed, and
    the checkpoint's `training` record (its training.json) must not name any of them as trained on."""
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
    if seen := trained_on(training or {}, data, articles):
        raise ValueError(
            f"{where}: the checkpoint trained on articles {seen} of them (its training.json); a score map fitted on "
            "questions the model learned would be too sure of itself"
        )
    return CalibrationData(Path(data), articles, examples, metric or CALIBRATION_METRIC)


def calibrate_bundle(
    bundle_dir: Path, held_out: CalibrationData, work: Path, threads: int | None = None
) -> dict[str, Any]:
    """A bundle's score map, fitted on questions its model never saw through the file the service picks on this
    machine's CPU, as manifest fields; each question runs with its own paragraph and with another article's, as
    the build calibrates (`build.calibrate_stage`)."""
    record, spec = fit_bundle(bundle_dir, str(held_out.data), held_out.articles, work, threads, held_out.metric)
    return calibration_fields(record, spec)
