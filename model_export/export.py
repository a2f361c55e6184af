"""Export a Hugging Face QA checkpoint to ONNX (fp32), fuse it for ONNX Runtime, and derive the fp16 variant."""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["start_logits", "end_logits"]
# The order the wrapper takes them in; the graph keeps only those the model's forward accepts.
CANDIDATE_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# 17 has LayerNormalization as a native op and is well covered by ORT's CPU and CUDA kernels.
OPSET = 17


@dataclass(frozen=True)
class ExportInfo:
    """What later steps (validation, manifest) need to know about an exported graph."""

    path: str
    input_names: list[str]
    output_names: list[str]
    opset: int
    num_heads: int
    hidden_size: int
    model_type: str


def _qa_wrapper(model: object, input_names: list[str]) -> object:
    """A module whose forward takes exactly `input_names` positionally and returns (start, end) logits."""
    import torch

    class QAWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(**dict(zip(input_names, tensors, strict=True)), return_dict=True)
            return out.start_logits, out.end_logits

    return QAWrapper()


def load_qa_model(model_dir: Path) -> object:
    """The checkpoint as AutoModelForQuestionAnswering in eval mode with eager attention.

    Eager attention exports to the MatMul/Softmax pattern that ORT's BERT fusion recognises;
    the SDPA path exports differently and mostly stays unfused.
    """
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(str(model_dir), attn_implementation="eager")
    return model.eval()


def model_input_names(model: object) -> list[str]:
    params = inspect.signature(model.forward).parameters  # type: ignore[attr-defined]
    return [n for n in CANDIDATE_INPUTS if n in params]


def export_onnx(model_dir: Path, out_path: Path, opset: int = OPSET) -> ExportInfo:
    """Trace the checkpoint to a single-file fp32 ONNX graph with dynamic batch and sequence axes.

    Why the TorchScript exporter (`dynamo=False`) and not the dynamo one or optimum-onnx:
    - torch 2.13 still ships it, it needs no onnxscript, and its graph is the op pattern that
      onnxruntime.transformers' BERT fusions (Attention, SkipLayerNorm, BiasGelu) were written for;
    - dynamic axes are declared directly and stay symbolic (no shape specialisation guards);
    - optimum-onnx would wrap the same exporter with its own input/output naming and task
      plumbing; we need exactly three inputs and two named outputs, so the direct call is simpler
      to reason about, and the validation optimum performs is reimplemented in validate.py.
    """
    import torch

    model = load_qa_model(model_dir)
    input_names = model_input_names(model)
    wrapper = _qa_wrapper(model, input_names)
    wrapper.eval()  # torch.onnx.export restores the previous training mode; make sure that is eval
    batch, seq = 2, 16
    dummy = (
        torch.randint(5, 100, (batch, seq), dtype=torch.int64),
        torch.ones(batch, seq, dtype=torch.int64),
        torch.zeros(batch, seq, dtype=torch.int64),
    )[: len(input_names)]
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in input_names + OUTPUT_NAMES}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            dummy,
            str(out_path),
            input_names=input_names,
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    cfg = model.config  # type: ignore[attr-defined]
    graph_inputs = _graph_input_names(out_path)
    if graph_inputs != input_names:
        # the tracer drops inputs the graph does not use; the manifest must list what the graph takes
        log.warning("exported graph takes %s (model forward takes %s)", graph_inputs, input_names)
    return ExportInfo(
        path=str(out_path),
        input_names=graph_inputs,
        output_names=list(OUTPUT_NAMES),
        opset=opset,
        num_heads=int(cfg.num_attention_heads),
        hidden_size=int(cfg.hidden_size),
        model_type=str(cfg.model_type),
    )


def _graph_input_names(path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in initializers]


def optimize_onnx(src: Path, dst: Path, num_heads: int, hidden_size: int) -> Path:
    """Apply onnxruntime.transformers' BERT fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm).

    opt_level=0 runs only the Python fusions, not ORT's own provider-specific graph rewrites, so the
    saved graph runs on CPU and CUDA alike; the session applies its own optimisations at load.
    The fused EmbedLayerNormalization turns attention_mask into per-row lengths, so batches must be
    right-padded (as model_export.data.pad_batch and the service do); validate.py checks padded batches.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    # exact Gelu: the tanh approximation would move logits further than the fp32 tolerance allows
    options.enable_gelu_approximation = False
    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    log.info("fused operators: %s", optimized.get_fused_operator_statistics())
    dst.parent.mkdir(parents=True, exist_ok=True)
    optimized.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def to_fp16(src: Path, dst: Path) -> Path:
    """Half-precision weights and compute for CUDA; inputs and outputs keep their dtypes (int64 in, fp32 out)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


def export_all(model_dir: Path, out_dir: Path, fp16: bool = True, opset: int = OPSET) -> dict[str, Path]:
    """model.raw.onnx (as traced) -> model.onnx (fused fp32) [-> model.fp16.onnx]; writes export.json beside them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "model.raw.onnx"
    info = export_onnx(model_dir, raw, opset)
    fp32 = optimize_onnx(raw, out_dir / "model.onnx", info.num_heads, info.hidden_size)
    files = {"fp32": fp32}
    if fp16:
        files["fp16"] = to_fp16(fp32, out_dir / "model.fp16.onnx")
    tok = model_dir / "tokenizer.json"
    if tok.is_file():
        shutil.copy(tok, out_dir / "tokenizer.json")
    record = {
        **asdict(info),
        "path": fp32.name,
        "source": str(model_dir),
        "files": {k: v.name for k, v in files.items()},
    }
    (out_dir / "export.json").write_text(json.dumps(record, indent=2))
    return files


def read_export_info(out_dir: Path) -> dict[str, object]:
    """The export.json written by `export_all`."""
    return json.loads((out_dir / "export.json").read_text())
