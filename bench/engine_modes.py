"""How to drive the runtime on a small CPU: threads, spinning, parallel sessions and batching, raw engine only.

    python bench/engine_modes.py --bundle models/default [--variant int8] [--questions 100]

Every session is the bundle opened by ServedModel as the service opens it (`--runtime` overrides the runtime it
picks for the file: OpenVINO for static int8, ONNX Runtime otherwise), with the threads, and the windows per call,
of the mode. Every mode runs the same windows (the first N KorQuAD test questions, as the service cuts them),
padded as the mode says, and reports questions per second. No HTTP, tokenizing or decoding: this decides how the
service should call the engine.

Spinning threads are the one mode ServedModel does not offer: the service never spins (its ONNX Runtime session
turns spinning off, so that idle threads leave the CPU to the rest of the server). That row reopens ServedModel's
own session with its own options and only spinning turned on; on OpenVINO there is no such row.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/engine_modes.py` finds the bench package

from app.engine.runtime import OrtRuntime, Runtime
from app.engine.served import ServedModel
from app.engine.windows import pad_batch
from bench.common import REPO, held_out_items, open_model

Batch = dict[str, np.ndarray]


def runtime_of(model: ServedModel) -> Runtime:
    assert model.runtime is not None  # open_model loads it
    return model.runtime


def with_spinning(model: ServedModel) -> ServedModel:
    """The model's ONNX Runtime session reopened with its own options, spinning threads on."""
    rt = runtime_of(model)
    if not isinstance(rt, OrtRuntime):
        raise ValueError(f"spinning is an ONNX Runtime mode; this model runs on {rt.provider}")
    opts = rt.session.get_session_options()
    # ONNX Runtime warns that this overwrites the entry OrtRuntime set: that is the point
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    rt.session = ort.InferenceSession(
        str(model.bundle_dir / model.model_file), opts, providers=rt.session.get_providers()
    )
    return model


def warm(rt: Runtime, batches: list[Batch]) -> None:
    """The first run of each shape, untimed: OpenVINO plans shapes on first sight (the service at warm-up)."""
    seen: set[tuple[int, ...]] = set()
    for b in batches:
        if b["input_ids"].shape not in seen:
            seen.add(b["input_ids"].shape)
            rt.run(b)


def run_serial(model: ServedModel, batches: list[Batch]) -> float:
    rt = runtime_of(model)
    warm(rt, batches)
    t0 = time.perf_counter()
    for b in batches:
        rt.run(b)
    return time.perf_counter() - t0


def run_parallel(models: list[ServedModel], batches: list[Batch]) -> float:
    rts = [runtime_of(m) for m in models]
    for rt in rts:
        warm(rt, batches)
    lock = threading.Lock()
    todo = list(range(len(batches)))

    def worker(rt: Runtime) -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            rt.run(batches[i])

    threads = [threading.Thread(target=worker, args=(rt,)) for rt in rts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino"], default="auto")
    args = ap.parse_args()
    c = args.cores

    def fresh(threads: int, batch_windows: int = 1) -> ServedModel:
        """A session opened as the service would open it with these threads and windows per call (ServedModel
        turns the CPU memory arena on for one window per call, off for batches)."""
        config = {"variant": args.variant, "runtime": args.runtime, "providers": "cpu"}
        return open_model(args.bundle, threads=threads, batch_windows=batch_windows, **config)

    first = fresh(c)
    rt_name = first.runtime_pick.name
    print(f"{first.variant} on {rt_name} ({first.runtime_pick.reason})", flush=True)
    items = held_out_items(args.questions)
    windows = [w for ws in first.windows([(it["question"], it["context"]) for it in items]) for w in ws]
    n, pad = len(items), first.pad_id
    single = [pad_batch([w], pad, 1) for w in windows]
    single8 = [pad_batch([w], pad, 8) for w in windows]
    single32 = [pad_batch([w], pad, 32) for w in windows]
    by_len = sorted(windows, key=len)
    rows = []

    def report(name: str, seconds: float) -> None:
        rows.append({"mode": name, "qps": round(n / seconds, 2), "windows": len(windows)})
        print(f"{name:55s} {n / seconds:6.2f} q/s", flush=True)

    report(f"1 session x {c} threads, per window, no padding", run_serial(first, single))
    report(f"1 session x {c} threads, per window, padded to 8", run_serial(first, single8))
    report(f"1 session x {c} threads, per window, padded to 32", run_serial(first, single32))
    if rt_name == "onnxruntime":
        report(f"1 session x {c} threads, spinning, per window", run_serial(with_spinning(fresh(c)), single))
    for bs in (4, 8):
        batches = [pad_batch(by_len[i : i + bs], pad, 32) for i in range(0, len(by_len), bs)]
        report(f"1 session x {c} threads, length-sorted batches of {bs}", run_serial(fresh(c, bs), batches))
    parallel = [fresh(1) for _ in range(c)]
    report(f"{c} sessions x 1 thread in parallel, per window", run_parallel(parallel, single8))
    report("1 session x 1 thread, per window", run_serial(parallel[0], single8))
    command = " ".join(["python", "bench/engine_modes.py", *sys.argv[1:]])
    print(json.dumps({"command": command, "variant": first.variant, "runtime": rt_name, "rows": rows}))


if __name__ == "__main__":
    main()
