"""Check exported ONNX graphs against the PyTorch model on the same padded batches; fail loudly on mismatch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.bundle import RuntimeName
from app.engine.runtime import open_runtime
from app.engine.windows import PairTokenizer, Window, WindowSpec, encode_windows, pad_batch, pad_token_id
from model_export.checkpoint import load_tokenizer
from model_export.export import load_qa_model

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """An exported graph does not behave like the model it came from; the message has the numbers."""


@dataclass(frozen=True)
class Tolerance:
    atol: float  # max |onnx - torch| over the logits decoding reads: [CLS] and the context's tokens
    min_argmax_agreement: float  # share of (window, start|end) whose argmax over real tokens is the same


# fp32 differs from PyTorch only by kernel summation order. fp16 and int8 move logits by amounts that
# scale with the logit range; argmax agreement counts every window, including those without the answer,
# where the argmax is a near-tie and flips easily. Measured on e5-small (a step-50 checkpoint of the real
# run, 38 windows of 384 from articles 0-111): fp32 max 1.2e-5; fp16 max 0.0096, agreement 0.97;
# int8 per-channel max 1.63, agreement 0.72 (per-tensor 0.55). These bounds catch a broken graph; the
# accuracy cost of int8 is judged by the test-split EM/F1 the build records per variant.
# Only [CLS] and context positions count: on a fully trained model int8 moved the logits of two question or
# separator tokens, which no span can start or end on, by 4.3 and 4.7 (fold 1 model, static int8, sample
# pairs), while the context's stayed within 1.5 and [CLS]'s within 0.14.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, min_argmax_agreement=0.99),
    "fp16": Tolerance(atol=0.1, min_argmax_agreement=0.9),
    "int8": Tolerance(atol=3.0, min_argmax_agreement=0.6),
}

# Built-in pairs in both languages; the long one spans several windows at small max_seq_length.
SAMPLE_PAIRS: list[tuple[str, str]] = [
    ("대한민국의 수도는 어디인가?", "대한민국의 수도는 서울이다. 서울은 한강을 끼고 있으며 인구는 약 천만 명이다."),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."),
    ("What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius. " * 12),
    (
        "세종대왕이 만든 문자는?",
        "조선의 제4대 왕 세종은 1443년 훈민정음을 창제하였다. 훈민정음은 오늘날 한글이라 불린다. " * 8,
    ),
]


def validation_windows(
    tokenizer: PairTokenizer, pairs: Sequence[tuple[str, str]], spec: WindowSpec, limit: int = 48
) -> list[Window]:
    """Windows exactly as serving makes them (app.engine.windows), at most `limit`."""
    return [w for ws in encode_windows(tokenizer, pairs, spec) for w in ws][:limit]


def batch_groups(windows: list[Window]) -> list[list[int]]:
    """Which windows go into each validation batch: several batch sizes, long and short windows alternated so
    that every batch is padded inside, exercising both dynamic axes."""
    if len(windows) < 3:
        raise ValueError(f"need at least 3 validation windows, got {len(windows)}")
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    mixed = [order[i // 2] if i % 2 == 0 else order[-(i // 2) - 1] for i in range(len(order))]
    sizes = [1, 2, 5, 8]
    groups: list[list[int]] = []
    i, k = 0, 0
    while i < len(mixed):
        n = sizes[k % len(sizes)]
        groups.append(mixed[i : i + n])
        i, k = i + n, k + 1
    return groups


def validation_batches(windows: list[Window], pad_id: int) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """The model inputs of each `batch_groups` batch, each padded to its longest window, and for each batch a
    (batch, width) bool mask of the positions decoding reads: [CLS], which scores the null answer, and the
    context tokens, where spans lie. The rest (question, separators, padding) no answer depends on."""
    batches, masks = [], []
    for group in batch_groups(windows):
        chosen = [windows[j] for j in group]
        batch = pad_batch(chosen, pad_id)
        mask = np.zeros(batch["input_ids"].shape, dtype=bool)
        for row, w in enumerate(chosen):
            mask[row, 0] = True
            mask[row, w.context_start : w.context_end] = True
        batches.append(batch)
        masks.append(mask)
    return batches, masks


def torch_outputs(
    model: Any, batches: list[dict[str, np.ndarray]], input_names: list[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reference logits from the PyTorch checkpoint (a loaded model or its directory; fp32, eval mode)."""
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    if isinstance(model, str | Path):
        model = load_qa_model(model)
    model.eval()
    out: list[tuple[np.ndarray, np.ndarray]] = []
    with torch.no_grad():
        for b in batches:
            r = model(**{n: torch.from_numpy(b[n]) for n in input_names})  # type: ignore[operator]
            out.append((r.start_logits.float().numpy(), r.end_logits.float().numpy()))
    return out


def check_structure(path: Path, input_names: list[str], output_names: list[str]) -> dict[str, object]:
    """Names, dtypes and symbolic batch/sequence axes of the graph's inputs and outputs."""
    import onnx  # noqa: PLC0415 - export extra

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    got_in, got_out = [i.name for i in inputs], [o.name for o in model.graph.output]
    if got_in != input_names or got_out != output_names:
        raise ValidationFailed(
            f"{path.name}: graph has inputs {got_in} outputs {got_out}, expected {input_names} {output_names}"
        )
    for value, dtype in [(v, onnx.TensorProto.INT64) for v in inputs] + [
        (v, onnx.TensorProto.FLOAT) for v in model.graph.output
    ]:
        t = value.type.tensor_type
        if t.elem_type != dtype:
            raise ValidationFailed(f"{path.name}: {value.name} has dtype {t.elem_type}, expected {dtype}")
        dims = t.shape.dim
        if len(dims) != 2 or not all(d.dim_param for d in dims):
            raise ValidationFailed(
                f"{path.name}: {value.name} axes {[d.dim_param or d.dim_value for d in dims]} are not dynamic"
            )
    return {
        "inputs": got_in,
        "outputs": got_out,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def compare(
    ort_out: list[tuple[np.ndarray, np.ndarray]],
    ref_out: list[tuple[np.ndarray, np.ndarray]],
    batches: list[dict[str, np.ndarray]],
    decoded: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """Max/mean |diff| over the positions decoding reads (`validation_batches`' masks; without them, every real token),
    and how often start/end argmax over real tokens agree. (The argmax keeps every real token: a trained model
    never puts it on the question, and a random test model's near-ties flip less often among more tokens.)"""
    diffs: list[np.ndarray] = []
    agree = total = 0
    reals = [b["attention_mask"].astype(bool) for b in batches]
    for (os_, oe), (rs, re_), real, read in zip(ort_out, ref_out, reals, decoded or reals, strict=True):
        for o, r in ((os_, rs), (oe, re_)):
            if o.shape != r.shape:
                raise ValidationFailed(f"output shape {o.shape}, PyTorch gives {r.shape}")
            diffs.append(np.abs(o - r)[read])
            agree += int((np.where(real, o, -np.inf).argmax(1) == np.where(real, r, -np.inf).argmax(1)).sum())
            total += len(o)
    d = np.concatenate(diffs)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "argmax_agreement": agree / total}


def run_onnx(
    path: Path,
    batches: list[dict[str, np.ndarray]],
    input_names: list[str],
    output_names: list[str],
    runtime: RuntimeName = "onnxruntime",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The file's logits on `batches`, run on the CPU by the runtime the service will serve it with."""
    # one thread: deterministic and polite to a machine that may be training
    runner = open_runtime(path, input_names, output_names, runtime, providers="cpu", threads=1)
    return [runner.run(b) for b in batches]


def validate_variant(
    path: Path,
    precision: str,
    batches: list[dict[str, np.ndarray]],
    reference: list[tuple[np.ndarray, np.ndarray]],
    input_names: list[str],
    output_names: list[str],
    tolerance: Tolerance,
    runtime: RuntimeName = "onnxruntime",
    decoded: list[np.ndarray] | None = None,
) -> dict[str, object]:
    """Structure, then values on the CPU (at the `decoded` positions of each batch, else every real token);
    raises ValidationFailed with the numbers when out of tolerance."""
    result: dict[str, object] = {"file": path.name, "precision": precision, "tolerance": asdict(tolerance)}
    result["structure"] = check_structure(path, input_names, output_names)
    shapes = [list(b["input_ids"].shape) for b in batches]
    if len({s[0] for s in shapes}) < 2 or len({s[1] for s in shapes}) < 2:
        raise ValueError(f"validation batches {shapes} do not vary both batch size and length")
    result["batch_shapes"] = shapes
    try:
        got = run_onnx(path, batches, input_names, output_names, runtime)
    except Exception as e:  # only fp16 may legitimately lack CPU kernels; anything else re-raises
        if precision != "fp16":
            raise ValidationFailed(f"{path.name}: {runtime} (CPU) failed: {e}") from e
        result.update(numerically_validated=False, reason=f"CPU EP cannot run it here: {str(e)[:300]}")
        log.warning("%s: validated structurally only (%s)", path.name, result["reason"])
        return result
    stats = compare(got, reference, batches, decoded)
    result.update(stats, numerically_validated=True, runtime=runtime)
    problems = []
    if stats["max_abs_diff"] > tolerance.atol:
        problems.append(f"max |diff| {stats['max_abs_diff']:.3g} > atol {tolerance.atol:g}")
    if stats["argmax_agreement"] < tolerance.min_argmax_agreement:
        problems.append(f"argmax agreement {stats['argmax_agreement']:.3f} < {tolerance.min_argmax_agreement:g}")
    if problems:
        raise ValidationFailed(
            f"{path.name} ({precision}) vs PyTorch: "
            + "; ".join(problems)
            + f" (mean |diff| {stats['mean_abs_diff']:.3g}, argmax agreement {stats['argmax_agreement']:.3f})"
        )
    log.info(
        "%s ok: max|diff| %.3g, argmax agreement %.3f", path.name, stats["max_abs_diff"], stats["argmax_agreement"]
    )
    return result


def validate(
    model: Any,
    onnx_files: dict[str, Path],
    input_names: list[str],
    output_names: list[str],
    spec: WindowSpec,
    pairs: Sequence[tuple[str, str]] | None = None,
    tolerances: dict[str, Tolerance] | None = None,
    tokenizer: Any = None,
    runtimes: dict[str, RuntimeName] | None = None,
) -> dict[str, object]:
    """Validate every variant against the checkpoint (a loaded model or its directory); raises on failure.

    `tokenizer` is the `tokenizers.Tokenizer` the bundle will ship; default: the checkpoint's tokenizer.json.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(str(model))
    windows = validation_windows(tokenizer, list(pairs or SAMPLE_PAIRS), spec)
    batches, decoded = validation_batches(windows, pad_token_id(tokenizer))
    reference = torch_outputs(model, batches, input_names)
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    variants = {
        precision: validate_variant(
            path,
            precision,
            batches,
            reference,
            input_names,
            output_names,
            tol[precision],
            (runtimes or {}).get(precision, "onnxruntime"),
            decoded,
        )
        for precision, path in onnx_files.items()
    }
    return {"reference": "PyTorch fp32 eval, eager attention", "windows": len(windows), "variants": variants}


def parse_tolerances(raw: dict[str, dict[str, float]] | None) -> dict[str, Tolerance]:
    """{"int8": {"atol": 1.0}} -> Tolerance objects, unspecified fields from DEFAULT_TOLERANCES."""
    out: dict[str, Tolerance] = {}
    for precision, fields in (raw or {}).items():
        out[precision] = Tolerance(**{**asdict(DEFAULT_TOLERANCES[precision]), **fields})
    return out
