"""int8 for the CPU: static (QDQ, calibrated, for OpenVINO) or dynamic (ORT's fused graph, smoothed first)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

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
    import onnx  # noqa: PLC0415 - export extra
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 - its quantization and transformers tools need onnx (export extra)

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


def quantize_static(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]]) -> Path:
    """Static int8 with NNCF: every product, attention's included, on activation scales fixed from `feeds`.

    `src` is the unfused fp32 graph (standard ONNX operators only), `feeds` training-split windows. NNCF's
    transformer scheme smooths activation outliers into the weights (SmoothQuant), keeps the operators that
    int8 would hurt (LayerNorm, Softmax, GELU) in floating point, and corrects each layer's bias shift; the
    result is a QDQ graph that OpenVINO compiles to int8 kernels. Scales fixed at build time also make a
    window's logits independent of whatever else shares its batch, which dynamic int8 cannot promise.
    On the KorQuAD models: test F1 79.04 against fp32's 79.09 (the model of 2026-11-28) and 78.61 against 78.02
    (the shipped one), at 1.4x the speed of dynamic int8 in ORT.
    """
    import nncf  # noqa: PLC0415 - export extra
    import onnx  # noqa: PLC0415 - export extra

    if not feeds:
        raise ValueError("static int8 needs calibration windows")
    model = onnx.load(str(src))
    _untie_weights(model.graph)
    names = {i.name for i in model.graph.input}
    data = nncf.Dataset([{k: v for k, v in f.items() if k in names} for f in feeds])
    quantized = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(dst))
    log.info("static int8 (QDQ, %d calibration windows): %s (%d bytes)", len(feeds), dst, dst.stat().st_size)
    return dst


def _untie_weights(graph: Any) -> None:
    """Give each product its own copy of a weight the exporter shared through an Identity node.

    Exporters deduplicate equal (tied) weights and read them back through Identity; NNCF's SmoothQuant
    looks for a constant right at the product and stops on anything else.
    """
    from onnx import numpy_helper  # noqa: PLC0415 - export extra

    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            shared = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(shared, node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


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


def smooth_activations(src: Path, dst: Path, feeds: Iterable[dict[str, np.ndarray]], alpha: float = 0.5) -> Path:
    """SmoothQuant for dynamic int8: move activation outliers into the weights, exactly, before quantizing.

    Dynamic int8 quantizes a matrix product's input with ONE scale per tensor. A few hidden channels of
    BERT-style encoders carry values tens of times larger than the rest, so that scale leaves the other
    channels a handful of levels: on the KorQuAD model, start/end argmax agreement with fp32 was 0.90.
    For each product X @ W with constant W this divides input channel j by s_j and multiplies row j of W
    by s_j, with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) measured on `feeds` (training-split windows):
    the same function in fp32, but flatter inputs for the quantizer. The division is a Mul on the
    product's own input, because in a post-LayerNorm encoder that tensor also feeds the residual path.
    (Xiao et al., "SmoothQuant", 2023.)
    """
    import onnx  # noqa: PLC0415 - export extra
    from onnx import helper, numpy_helper  # noqa: PLC0415 - export extra

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = [
        (n, n.input[0], n.input[1])
        for n in graph.node
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in inits
    ]
    if not targets:
        raise ValueError(f"{src}: no MatMul or Attention with a constant weight to smooth")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for x in dict.fromkeys(x for _, x, _ in targets):
        if x not in known:
            probe.graph.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, {k: feed[k] for k in inputs}), strict=True):
            if name in {x for _, x, _ in targets}:
                m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                amax[name] = m if name not in amax else np.maximum(amax[name], m)
    if not amax:
        raise ValueError("no calibration batches")
    for node, x, w_name in targets:
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        s = amax[x] ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-8) ** (1 - alpha)
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        inits[w_name].CopyFrom(numpy_helper.from_array(w * s[:, None], w_name))
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{node.name}_smooth_inv")
        graph.initializer.append(inv)
        smoothed = f"{node.name}_smoothed_input"
        graph.node.append(helper.make_node("Mul", [x, inv.name], [smoothed], name=f"{node.name}_smooth"))
        node.input[0] = smoothed
    _topological_sort(graph)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    log.info("smoothed %d products (alpha %.2f): %s", len(targets), alpha, dst)
    return dst


def _topological_sort(graph: object) -> None:
    """Reorder nodes so each comes after its inputs' producers (new Mul nodes were appended at the end)."""
    nodes = list(graph.node)  # type: ignore[attr-defined]
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}  # type: ignore[attr-defined]
    ordered = []
    pending = nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or an input nobody produces")
        pending = rest
    del graph.node[:]  # type: ignore[attr-defined]
    graph.node.extend(ordered)  # type: ignore[attr-defined]
