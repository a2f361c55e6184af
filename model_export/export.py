"""Export a Hugging Face QA checkpoint to ONNX through optimum's exporter, fuse it for ONNX Runtime, derive fp16."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_export.checkpoint import ExportError

log = logging.getLogger(__name__)

TASK = "question-answering"
OUTPUT_NAMES = ["start_logits", "end_logits"]


@dataclass(frozen=True)
class ExportInfo:
    """What later steps (validation, manifest) need to know about an exported graph."""

    path: str
    input_names: list[str]  # read back from the graph: what the service must feed, in order
    output_names: list[str]
    opset: int
    num_heads: int
    hidden_size: int
    model_type: str


def supported_model_types() -> list[str]:
    """Model types optimum-onnx can export for question answering."""
    import optimum.exporters.onnx.model_configs  # noqa: F401, PLC0415 - registers the ONNX configs with TasksManager
    from optimum.exporters.tasks import TasksManager  # noqa: PLC0415 - export extra

    return sorted(TasksManager.get_supported_model_type_for_task(TASK, exporter="onnx"))


def check_model_type(model_type: str) -> None:
    """Fail with the list of supported types when optimum has no question-answering ONNX config for this one."""
    supported = supported_model_types()
    if model_type.replace("_", "-") not in supported and model_type not in supported:
        raise ExportError(
            f"model type {model_type!r} is not supported by the optimum-onnx exporter for {TASK}; "
            f"supported: {', '.join(supported)}. Fine-tune one of these architectures, or export the graph "
            "yourself and write the bundle with model_export.bundle.write_bundle"
        )


def load_qa_model(model: str | Path, local_files_only: bool = False) -> Any:
    """The checkpoint as AutoModelForQuestionAnswering in eval mode with eager attention.

    Eager attention exports to the MatMul/Softmax pattern that ORT's BERT fusions recognise; the SDPA
    path exports differently and mostly stays unfused. A checkpoint whose QA head is missing would load
    with a freshly initialised one, and random spans, so that is an error here.
    """
    from transformers import AutoConfig, AutoModelForQuestionAnswering  # noqa: PLC0415 - export extra

    try:
        config = AutoConfig.from_pretrained(str(model), local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise ExportError(
            f"{model}: cannot read a model config ({e}). Pass a local model directory (config.json and weights) "
            "or a Hugging Face hub id on a machine that can reach the hub"
        ) from e
    check_model_type(str(config.model_type))
    try:
        qa, info = AutoModelForQuestionAnswering.from_pretrained(
            str(model), attn_implementation="eager", output_loading_info=True, local_files_only=local_files_only
        )
    except ValueError as e:  # transformers has no *ForQuestionAnswering class for this config
        raise ExportError(f"{model}: {config.model_type} has no question-answering model in transformers ({e})") from e
    missing = list(info.get("missing_keys", []))
    if missing:
        arch = ", ".join(config.architectures or ["unknown"])
        raise ExportError(
            f"{model}: no question-answering head (the checkpoint is {arch}; missing weights {missing[:4]}). "
            f"Fine-tune it for extractive QA first (python -m model_export train --base-model {model} ...), "
            f"or pass a *ForQuestionAnswering checkpoint"
        )
    return qa.eval()


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    """Attention heads and hidden size under the names each architecture uses (DistilBERT: n_heads, dim)."""
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


def graph_input_names(path: Path) -> list[str]:
    """The graph's inputs in order (initializers excluded): exactly what the service will feed."""
    import onnx  # noqa: PLC0415 - export extra

    m = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in initializers]


def export_onnx(model: Any, out_dir: Path, opset: int | None = None) -> ExportInfo:
    """optimum-onnx's exporter (task question-answering): dynamic batch and sequence axes, then its own check.

    The exporter runs the PyTorch model and ONNX Runtime on the same dummy inputs and compares names,
    shapes and values; validate.py then checks every variant on real, padded windows.
    """
    from optimum.exporters.onnx import onnx_export_from_model  # noqa: PLC0415 - export extra

    out_dir.mkdir(parents=True, exist_ok=True)
    # the exporter puts the module back in its previous mode; it must be eval, or dropout stays on
    model.eval()
    onnx_export_from_model(model, out_dir, task=TASK, opset=opset, do_validation=True, no_dynamic_axes=False)
    path = out_dir / "model.onnx"
    if not path.is_file():
        raise ExportError(f"optimum's exporter wrote no {path.name} in {out_dir}")
    import onnx  # noqa: PLC0415 - export extra

    graph = onnx.load(str(path), load_external_data=False)
    outputs = [o.name for o in graph.graph.output]
    if outputs != OUTPUT_NAMES:
        raise ExportError(f"exported graph has outputs {outputs}, expected {OUTPUT_NAMES}")
    heads, hidden = _heads_and_hidden(model.config)
    inputs = graph_input_names(path)
    log.info(
        "optimum export (%s, %s): inputs %s, dynamic batch and sequence axes", model.config.model_type, TASK, inputs
    )
    return ExportInfo(
        path=str(path),
        input_names=inputs,
        output_names=outputs,
        opset=max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        num_heads=heads,
        hidden_size=hidden,
        model_type=str(model.config.model_type),
    )


def fusion_model_type(model_type: str) -> str | None:
    """onnxruntime.transformers' optimizer family for this architecture (optimum's table), None if it has none."""
    from optimum.onnxruntime.utils import ORTConfigManager  # noqa: PLC0415 - export extra

    try:
        return ORTConfigManager.get_model_ort_type(model_type)
    except KeyError:
        return None


def optimize_onnx(src: Path, dst: Path, info: ExportInfo) -> dict[str, int]:
    """Apply onnxruntime.transformers' fusions (Attention, SkipLayerNorm, BiasGelu, ...); returns their counts.

    opt_level=0 runs only the Python fusions, not ORT's own provider-specific graph rewrites, so the
    saved graph runs on CPU and CUDA alike; the session applies its own optimisations at load.
    The fused EmbedLayerNormalization turns attention_mask into per-row lengths, so batches must be
    right-padded (as app.engine.windows.pad_batch does); validate.py checks padded batches.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions  # noqa: PLC0415 - its quantization and transformers tools need onnx (export extra)
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415 - its quantization and transformers tools need onnx (export extra)

    dst.parent.mkdir(parents=True, exist_ok=True)
    family = fusion_model_type(info.model_type)
    if family is None:
        log.warning("no ONNX Runtime fusions for %s; model.onnx is the exported graph as it is", info.model_type)
        shutil.copyfile(src, dst)
        return {}
    options = FusionOptions(family)
    # exact Gelu: the tanh approximation would move logits further than the fp32 tolerance allows
    options.enable_gelu_approximation = False
    optimized = optimize_model(
        str(src),
        model_type=family,
        num_heads=info.num_heads,
        hidden_size=info.hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    fused = {op: int(n) for op, n in optimized.get_fused_operator_statistics().items() if n}
    log.info("fused operators: %s", fused)
    optimized.save_model_to_file(str(dst), use_external_data_format=False)
    return fused


def to_fp16(src: Path, dst: Path) -> Path:
    """Half-precision weights and compute for CUDA; inputs and outputs keep their dtypes (int64 in, fp32 out)."""
    import onnx  # noqa: PLC0415 - export extra
    from onnxruntime.transformers.onnx_model import OnnxModel  # noqa: PLC0415 - its quantization and transformers tools need onnx (export extra)

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def export_all(
    model_dir: str | Path, out_dir: Path, fp16: bool = True, opset: int | None = None, model: Any = None
) -> dict[str, Path]:
    """model.raw.onnx (as exported) -> model.onnx (fused fp32) [-> model.fp16.onnx]; writes export.json beside them.

    `model` is the already loaded checkpoint (load_qa_model), when the caller has it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    qa = model if model is not None else load_qa_model(model_dir)
    exported = out_dir / "optimum"
    info = export_onnx(qa, exported, opset)
    raw = out_dir / "model.raw.onnx"
    shutil.copyfile(exported / "model.onnx", raw)
    info = ExportInfo(**{**asdict(info), "path": str(raw)})
    fp32 = out_dir / "model.onnx"
    fused = optimize_onnx(raw, fp32, info)
    files = {"fp32": fp32}
    if fp16:
        files["fp16"] = to_fp16(fp32, out_dir / "model.fp16.onnx")
    record = {
        **asdict(info),
        "path": fp32.name,
        "exporter": "optimum-onnx onnx_export_from_model (task question-answering)",
        "source": str(model_dir),
        "fused_operators": fused,
        "files": {k: v.name for k, v in files.items()},
    }
    (out_dir / "export.json").write_text(json.dumps(record, indent=2))
    return files


def read_export_info(out_dir: Path) -> dict[str, Any]:
    """The export.json written by `export_all`."""
    return json.loads((out_dir / "export.json").read_text())
