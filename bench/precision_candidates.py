"""Which low precision for the CPU: speed and faithfulness of each candidate on one model, in one run.

    python bench/precision_candidates.py [--fp32 runs/korquad-e5-small/onnx/model.onnx]

The fp32 graph is the build's fused export of the shipped model (its unfused export, model.raw.onnx, beside it).
For each candidate this prints questions per second on the first 100 KorQuAD test questions (`--questions`;
windows one per call, as the service runs a CPU) and start/end argmax agreement and mean |logit difference|
against fp32 on 215 windows of training articles 0-7 (the choice is made on training data; test-split F1 of the
chosen one is in the model card). The candidates are loose ONNX files, not bundles, so each runs in a plain
session of its runtime rather than through ServedModel; the windows are cut and padded by the service's own
functions. Candidates:
  dynamic int8            onnxruntime quantize_dynamic, per-channel weights (activations scaled per tensor)
  dynamic int8, smoothed  the same after SmoothQuant alpha 0.7 (the previous default bundle)
  static int8 (QDQ)       quantize_static, per-channel weights, activation ranges calibrated on 64 training windows
  static int8, OpenVINO   NNCF's transformer scheme (SmoothQuant, fp LayerNorm/Softmax/GELU, bias correction) on
                          128 training windows, run by OpenVINO (what the default bundle ships)
  OpenVINO bf16           OpenVINO on the fp32 graph with the bf16 precision hint, where the CPU has AVX512-BF16
                          or AMX (pip install openvino; skipped, and said so, without it)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

# the export extra's quantizers; every run builds every candidate with them
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
from onnxruntime.quantization import quantize_static as ort_quantize_static

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/precision_candidates.py` finds bench

from app.engine.hardware import cpu_flags
from app.engine.runtime import OpenVinoRuntime
from app.engine.served import load_tokenizer
from app.engine.windows import WindowSpec, encode_windows, pad_batch, pad_token_id, padded_width
from bench.common import DATA, REPO, held_out_items
from model_export.data import load_examples
from model_export.quantize import quantize_int8, smooth_activations
from model_export.quantize import quantize_static as nncf_quantize_static

Run = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def ort_runner(path: Path, threads: int) -> Run:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return lambda f: tuple(s.run(None, {k: f[k] for k in names}))  # type: ignore[return-value]


def openvino_runner(path: Path, threads: int) -> Run | str:
    try:
        import openvino as ov  # noqa: PLC0415 - optional: the row is skipped, and says so, without it
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    flags = cpu_flags()
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return "this CPU has neither AVX512-BF16 nor AMX: OpenVINO would run fp32"
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )
    names = [i.get_any_name() for i in compiled.inputs]
    request = compiled.create_infer_request()

    def run(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = request.infer({k: f[k] for k in names})
        return tuple(out[o] for o in compiled.outputs)  # type: ignore[return-value]

    return run


def nncf_openvino_runner(raw: Path, dst: Path, calib: list[dict[str, np.ndarray]], threads: int) -> Run | str:
    try:  # NNCF and OpenVINO are imported by these calls; without them the row is skipped, and says so
        nncf_quantize_static(raw, dst, calib)
        inputs, outputs = ["input_ids", "attention_mask", "token_type_ids"], ["start_logits", "end_logits"]
        rt = OpenVinoRuntime(dst, inputs, outputs, threads)
    except ImportError as e:
        return f"{e.name} is not installed"

    def run(f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # padded as the service pads a lone window for OpenVINO, cut back for the comparison
        n = f["input_ids"].shape[1]
        width = padded_width(n, rt.pad_multiple)
        padded = {k: np.pad(v, ((0, 0), (0, width - n))) for k, v in f.items()}
        start, end = rt.run(padded)
        return start[:, :n], end[:, :n]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, default=REPO / "runs" / "korquad-e5-small" / "onnx" / "model.onnx")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "models" / "default" / "tokenizer.json")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=100, help="test questions timed for q/s")
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)  # as ServedModel loads a bundle's: no truncation, no padding
    pad = pad_token_id(tok)
    spec = WindowSpec(384, 128, 64)  # the shipped bundle's windows

    def windows(pairs: list[tuple[str, str]]) -> list[dict[str, np.ndarray]]:
        return [pad_batch([w], pad) for ws in encode_windows(tok, pairs, spec) for w in ws]

    train = load_examples(str(DATA), "0:112")
    calib = windows([(e.question, e.context) for e in train[16::17]])[:64]
    calib2 = windows([(e.question, e.context) for e in train[16::17]])[:128]
    check = windows([(e.question, e.context) for e in load_examples(str(DATA), "0:8")[:200]])
    items = held_out_items(args.questions)
    speed = windows([(it["question"], it["context"]) for it in items])
    args.work.mkdir(parents=True, exist_ok=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            f = next(self.it, None)
            return None if f is None else {k: f[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    files = {"fp32": args.fp32}
    files["dynamic int8"] = quantize_int8(args.fp32, args.work / "dynamic.onnx")
    smooth = smooth_activations(args.fp32, args.work / "smooth.onnx", calib, 0.7)
    files["dynamic int8, smoothed"] = quantize_int8(smooth, args.work / "dynamic-smooth.onnx")
    raw = args.fp32.with_name("model.raw.onnx")  # QDQ on the unfused graph: fused contrib ops are not quantizable
    ort_quantize_static(
        raw,
        args.work / "static-qdq.onnx",
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
    )
    files["static int8 (QDQ)"] = args.work / "static-qdq.onnx"
    runners: dict[str, Run | str] = {k: ort_runner(v, args.threads) for k, v in files.items()}
    runners["OpenVINO bf16"] = openvino_runner(args.fp32, args.threads)
    runners["static int8, OpenVINO"] = nncf_openvino_runner(raw, args.work / "static-nncf.onnx", calib2, args.threads)

    ref = [runners["fp32"](f) for f in check]  # type: ignore[operator]
    print(f"{'candidate':26s} {'q/s':>6s} {'vs fp32':>8s} {'argmax agree':>13s} {'mean |diff|':>12s}")
    base = None
    for name, run in runners.items():
        if isinstance(run, str):
            print(f"{name:26s} skipped: {run}")
            continue
        shapes = {f["input_ids"].shape[1]: f for f in speed}
        for f in shapes.values():  # untimed: the first run of each shape, which OpenVINO plans
            run(f)
        t0 = time.perf_counter()
        for f in speed:
            run(f)
        qps = len(items) / (time.perf_counter() - t0)
        base = base or qps
        got = [run(f) for f in check]
        pairs = list(zip(ref, got, strict=True))
        agree = np.mean([(a[0].argmax() == b[0].argmax()) and (a[1].argmax() == b[1].argmax()) for a, b in pairs])
        diff = np.mean([np.abs(a[0] - b[0]).mean() for a, b in pairs])
        print(f"{name:26s} {qps:6.2f} {qps / base:7.2f}x {agree:13.3f} {diff:12.4f}", flush=True)


if __name__ == "__main__":
    main()
