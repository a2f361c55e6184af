"""The CLI's single-step verbs, flags and handlers only (`__main__` registers them): export, quantize and validate
run one stage of the pipelines; evaluate and score measure a model, calibrate measures or fits its score map."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.engine.bundle import BundleError, read_manifest
from model_export.calibrate import fit_bundle, measure_bundle, trained_on
from model_export.config import add_window_flags, window_flags
from model_export.evaluate import evaluate_model
from model_export.export import ExportError
from model_export.metrics import CALIBRATION_METRIC, METRICS, questions_and_predictions, score
from model_export.quantize import quantize_int8
from model_export.stages import calibration_fields, export_stage, set_calibration, validate_export
from model_export.validate import ValidationFailed

# ---------------------------------------------------------------- evaluate / score


def cmd_evaluate(args: argparse.Namespace) -> int:
    windows = {k: getattr(args, k) for k in ("max_seq_length", "doc_stride", "max_query_length")}
    try:
        result = evaluate_model(
            args.model,
            args.data,
            args.articles,
            Path(args.out) if args.out else None,
            args.variant,
            args.max_answer_length,
            args.batch_size,
            args.threads,
            windows,
        )
    except (OSError, ValueError, BundleError, RuntimeError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="predict a split with a checkpoint, bundle or service and score it")
    p.add_argument("--model", required=True, help="checkpoint dir, bundle dir (manifest.json) or http(s) service URL")
    p.add_argument("--data", required=True, help="SQuAD-format JSON file")
    p.add_argument("--articles", default="112:140", help="article range (default 112:140, the held-out test split)")
    p.add_argument("--out", default=None, help="directory for predictions.json, nbest.json and scores.json")
    p.add_argument("--variant", default="auto", help="bundle precision: int8|fp32|fp16 (auto: int8 if present)")
    p.add_argument("--max-answer-length", type=int, default=30, help="longest answer in tokens (local models)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="checkpoint: windows per model call; service: questions per request (a bundle batches as the service)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs this process may use)")
    p.add_argument("--max-seq-length", type=int, default=None, help="checkpoint only (default: training.json, 384)")
    p.add_argument("--doc-stride", type=int, default=None, help="checkpoint only (default: training.json, 128)")
    p.add_argument("--max-query-length", type=int, default=None, help="checkpoint only (default: training.json, 64)")
    p.set_defaults(func=cmd_evaluate)


def cmd_score(args: argparse.Namespace) -> int:
    try:
        questions, predictions = questions_and_predictions(args.dataset, args.predictions, args.articles)
        result = score(questions, predictions, args.metric)
    except (OSError, ValueError, KeyError) as e:
        print(f"score: {e}", file=sys.stderr)
        return 1
    missing = sum(qid not in predictions for qid, _ in questions)
    if missing:
        # the official scripts warn too: a file scored against the wrong split would otherwise look like a bad model
        hint = "" if args.articles else "; --articles selects the articles your predictions cover"
        print(f"score: {missing} of {len(questions)} questions have no prediction and score 0{hint}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def add_score(sub: argparse._SubParsersAction) -> None:
    """The official scripts' interface plus --metric and --articles."""
    p = sub.add_parser("score", help="score a predictions file (official SQuAD v1.1 / KorQuAD 1.0 metric)")
    p.add_argument("dataset", help="SQuAD-format dataset JSON")
    p.add_argument("predictions", help="predictions JSON: {question id: answer text}")
    p.add_argument("--metric", choices=METRICS, required=True, help="squad: token F1; korquad: character F1")
    p.add_argument("--articles", default=None, help="article range such as 112:140 (default: every article)")
    p.set_defaults(func=cmd_score)


# ---------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    bundle, out = Path(args.bundle), Path(args.out)
    try:
        if not args.fit:
            result = measure_bundle(bundle, args.data, args.articles, out, args.threads, args.metric)
        else:
            manifest = read_manifest(bundle)
            if seen := trained_on(manifest.training, args.data, args.articles):
                print(
                    f"calibrate: --fit on articles {args.articles}: the bundle's model trained on {seen} of them "
                    "(its manifest's training record); fit on articles it never saw",
                    file=sys.stderr,
                )
                return 2
            metric = args.metric or CALIBRATION_METRIC
            record, spec = fit_bundle(bundle, args.data, args.articles, out, args.threads, metric)
            fields = calibration_fields(record, spec)
            set_calibration(bundle, fields)  # atomically; no file changes, so the hashes still hold
            (out / "calibration.json").write_text(json.dumps(fields, indent=1, ensure_ascii=False), encoding="utf-8")
            result = fields
    except (OSError, ValueError, KeyError, BundleError, ExportError) as e:  # a missing file, a bad range, not a bundle
        print(f"calibrate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure a bundle's score map on some articles (the test split), or fit it there with --fit",
        description="Runs the answerable questions of --articles through the bundle's served file as the CPU service "
        "runs it, each over its own paragraph and over another article's. By default it measures the bundle's map "
        "there (calibration_test.json, reliability_test.png in --out). With --fit it instead fits the map on those "
        "articles by the rule of docs/calibration.md and writes it into the bundle's manifest (calibration.json, "
        "reliability_dev.png and the logits in --out); the articles must be ones the model never trained on.",
    )
    p.add_argument("--bundle", required=True, help="the bundle directory (manifest.json)")
    p.add_argument("--data", required=True, help="SQuAD-format JSON holding the articles")
    p.add_argument("--articles", required=True, help="article range, two articles at least, e.g. 112:140")
    p.add_argument(
        "--fit",
        action="store_true",
        help="fit the bundle's score map on --articles (held out from its training) and record it in its manifest",
    )
    p.add_argument(
        "--metric",
        choices=METRICS,
        help="whose exact match makes an answer right: korquad or squad, which also drops English articles (a, an, "
        "the); default: --fit korquad, else the one the bundle's map was fitted with",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPUs this process may use)")
    p.add_argument("--out", required=True, help="directory for the figures, the plot and (--fit) the logits")
    p.set_defaults(func=cmd_calibrate)


# ---------------------------------------------------------------- export / quantize / validate


def cmd_export(args: argparse.Namespace) -> int:
    try:
        files, _ = export_stage(args.model, Path(args.out), ["fp32", "fp16"] if args.fp16 else ["fp32"], args.opset)
    except ExportError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="HF QA checkpoint -> optimum ONNX export -> fused fp32 (model.onnx) and fp16 (model.fp16.onnx)"
    )
    p.add_argument("--model", required=True, help="checkpoint dir (config.json, weights, tokenizer.json)")
    p.add_argument("--out", required=True, help="output dir; export.json records names and shapes")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="also write the fp16 variant")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: optimum's for the architecture)")
    p.set_defaults(func=cmd_export)


def cmd_quantize(args: argparse.Namespace) -> int:
    src = Path(args.model)
    out = Path(args.out) if args.out else src.with_name("model.int8.onnx")
    print(quantize_int8(src, out, per_channel=args.per_channel, embeddings=args.embeddings))
    return 0


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="dynamic int8 (QInt8 weights) for the CPU execution provider")
    p.add_argument("--model", required=True, help="fused fp32 ONNX file (model.onnx from export)")
    p.add_argument("--out", default=None, help="output file (default: model.int8.onnx beside the input)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True, help="per-channel scales")
    p.add_argument(
        "--embeddings", action=argparse.BooleanOptionalAction, default=True, help="also quantize the embedding tables"
    )
    p.set_defaults(func=cmd_quantize)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        report = validate_export(
            args.model,
            Path(args.onnx_dir),
            args.variants,
            window_flags(args),
            args.data,
            args.articles,
            args.max_examples,
            json.loads(args.tolerances) if args.tolerances else None,
        )
    except ValidationFailed as e:
        print(f"validate: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare ONNX variants with the PyTorch checkpoint on padded batches")
    p.add_argument("--model", required=True, help="the checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", required=True, help="export output dir (export.json, model*.onnx)")
    p.add_argument("--variants", nargs="+", default=["fp32", "fp16", "int8"], help="precisions to check if present")
    add_window_flags(p)
    p.add_argument("--data", default=None, help="SQuAD-format file for validation pairs (default: built-in samples)")
    p.add_argument("--articles", default="0:112", help="articles of --data (default 0:112, the training split)")
    p.add_argument("--max-examples", type=int, default=16, help="questions taken from --data (default 16)")
    p.add_argument("--tolerances", default=None, help='JSON overrides, e.g. {"int8": {"atol": 2.0}}')
    p.set_defaults(func=cmd_validate)
