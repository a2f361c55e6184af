"""How to drive the runtime on a small CPU: threads, spinning, parallel sessions and batching, raw engine only.

    python bench/engine_modes.py --bundle models/default [--variant int8] [--questions 100]

The runtime is the one the service picks for the file (the manifest's `runtime`: OpenVINO for static int8,
ONNX Runtime otherwise); `--runtime` overrides it. Spinning threads are an ONNX Runtime mode only.

Every mode runs the same windows (the first N KorQuAD test questions, as the service cuts them) and reports
questions per second. No HTTP, tokenizing or decoding: this decides how the service should call the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.hardware import pick_runtime  # noqa: E402
from app.engine.runtime import OrtRuntime, Runtime, open_runtime, openvino_version  # noqa: E402
from app.engine.windows import encode_pairs, make_windows, pad_batch, pad_token_id  # noqa: E402
from bench.peers import DATA, load_items  # noqa: E402


def session(bundle: Path, m: dict, variant: str, threads: int, spin: bool, runtime: str) -> Runtime:
    rt = open_runtime(bundle / m["variants"][variant], m["input_names"], m["output_names"], runtime, "cpu", threads)
    if spin and isinstance(rt, OrtRuntime):  # OrtRuntime turns spinning off; rebuild with it on
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        rt.session = ort.InferenceSession(
            str(bundle / m["variants"][variant]), opts, providers=["CPUExecutionProvider"]
        )
    return rt


def warm(rt: Runtime, batches: list[dict[str, np.ndarray]]) -> None:
    """The first run of each shape, untimed: OpenVINO plans shapes on first sight (the service at warm-up)."""
    seen: set[tuple[int, ...]] = set()
    for b in batches:
        if b["input_ids"].shape not in seen:
            seen.add(b["input_ids"].shape)
            rt.run(b)


def run_serial(rt: Runtime, batches: list[dict[str, np.ndarray]]) -> float:
    warm(rt, batches)
    t0 = time.perf_counter()
    for b in batches:
        rt.run(b)
    return time.perf_counter() - t0


def run_parallel(rts: list[Runtime], batches: list[dict[str, np.ndarray]]) -> float:
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
    from tokenizers import Tokenizer

    m = json.loads((args.bundle / "manifest.json").read_text())
    built_for = m["files"][m["variants"][args.variant]].get("runtime")
    rt_name = pick_runtime(built_for, args.runtime, False, openvino_version()).name
    print(f"{args.variant} on {rt_name}", flush=True)

    def make(threads: int, spin: bool = False) -> Runtime:
        return session(args.bundle, m, args.variant, threads, spin, rt_name)

    tok = Tokenizer.from_file(str(args.bundle / m["tokenizer"]))
    pad = pad_token_id(tok)
    items = load_items(DATA, slice(112, 140))[: args.questions]
    win = {k: m[k] for k in ("max_seq_length", "doc_stride", "max_query_length")}
    windows = [
        w for p in encode_pairs(tok, [(it["question"], it["context"]) for it in items]) for w in make_windows(p, **win)
    ]
    n, c = len(items), args.cores
    single = [pad_batch([w], pad, 1) for w in windows]
    single8 = [pad_batch([w], pad, 8) for w in windows]
    single32 = [pad_batch([w], pad, 32) for w in windows]
    by_len = sorted(windows, key=len)
    rows = []

    def report(name: str, seconds: float) -> None:
        rows.append({"mode": name, "qps": round(n / seconds, 2), "windows": len(windows)})
        print(f"{name:55s} {n / seconds:6.2f} q/s", flush=True)

    report(f"1 session x {c} threads, per window, no padding", run_serial(make(c), single))
    report(f"1 session x {c} threads, per window, padded to 8", run_serial(make(c), single8))
    report(f"1 session x {c} threads, per window, padded to 32", run_serial(make(c), single32))
    if rt_name == "onnxruntime":
        report(f"1 session x {c} threads, spinning, per window", run_serial(make(c, spin=True), single))
    for bs in (4, 8):
        batches = [pad_batch(by_len[i : i + bs], pad, 32) for i in range(0, len(by_len), bs)]
        report(f"1 session x {c} threads, length-sorted batches of {bs}", run_serial(make(c), batches))
    rts = [make(1) for _ in range(c)]
    report(f"{c} sessions x 1 thread in parallel, per window", run_parallel(rts, single8))
    report("1 session x 1 thread, per window", run_serial(rts[0], single8))
    command = " ".join(["python", "bench/engine_modes.py", *sys.argv[1:]])
    print(json.dumps({"command": command, "runtime": rt_name, "rows": rows}))


if __name__ == "__main__":
    main()
