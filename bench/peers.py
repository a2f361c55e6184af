"""Peer benchmark: transformers, Optimum ORT, raw ORT and this service, one fp32 checkpoint, the same questions.

    python bench/peers.py                                   # 100 KorQuAD test questions on the CPU
    python bench/peers.py --questions 5 --skip transformers # a quick check
    python bench/peers.py --device cuda                     # on a CUDA host (scripts/gpu_check.sh runs this)

The checkpoint is the served architecture (multilingual-e5-small: a 12-layer BERT, hidden 384, with a QA head)
with random weights and the shipped tokenizer: speed depends on the shapes, not on the weights. It is built once
under runs/peers/ and bundled with `python -m model_export bundle` (fp32 and int8; fp16 too on CUDA).

Rows, each over the first N questions of the test articles (112+) with their own paragraphs, batch 1:
  transformers  `pipeline("question-answering")` on PyTorch fp32, torch threads = the CPU quota
  optimum       optimum's ORTModelForQuestionAnswering (its own export) in optimum's pipeline
  raw ORT       the bundle's fp32 graph (and its int8, or fp16 on CUDA) on the repository's windows, one per
                call, nothing else timed: the ceiling for any server of this model on this machine. The int8
                file is static (QDQ) and runs on OpenVINO, as the service runs it ("raw OpenVINO int8")
  service       `python -m app` over HTTP, driven by bench/load.py in its own process at 1 and 16 clients,
                on the fp32 variant (same precision as the peers) and on int8 (fp16 on CUDA)
Prints a markdown table (q/s, p50, p99, ratio to the best of transformers and optimum), writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/peers.py` finds the bench package

from app.engine.bundle import read_manifest
from app.engine.hardware import cpu_name, cpu_quota
from app.engine.windows import pad_batch
from bench.common import REPO, held_out_items, latency_ms, metric, metric_by, open_model, rate, server

CACHE = REPO / "runs" / "peers"
TOKENIZER = REPO / "models" / "default" / "tokenizer.json"
# multilingual-e5-small's encoder; the vocabulary is the shipped (pruned) tokenizer's
E5_SMALL = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
PEERS = ("transformers", "optimum")  # the rows the ratio column compares against
ROWS = ("transformers", "optimum", "raw", "service")
CLIENTS = (1, 16)


# --------------------------------------------------------------------------- model files (cached)
def ensure_checkpoint(out: Path, seed: int = 0) -> Path:
    """A random-weight e5-small QA checkpoint with the shipped tokenizer, as save_pretrained writes it."""
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch  # noqa: PLC0415 - export extra, seconds to import: only when the checkpoint is built
    import transformers as tf  # noqa: PLC0415 - export extra, as torch
    from tokenizers import Tokenizer  # noqa: PLC0415 - beside transformers' wrapper of it

    backend = Tokenizer.from_file(str(TOKENIZER))
    # the shipped vocabulary is XLM-R's sentencepiece with the RoBERTa pair template: <s> q </s></s> c </s>
    tokenizer = tf.XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=E5_SMALL["max_position_embeddings"],
    )
    config = tf.BertConfig(vocab_size=backend.get_vocab_size(), pad_token_id=tokenizer.pad_token_id, **E5_SMALL)
    torch.manual_seed(seed)
    model = tf.BertForQuestionAnswering(config).eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_bundle(checkpoint: Path, out: Path, variants: Sequence[str], int8_method: str = "static") -> Path:
    """The service's bundle of `checkpoint`, built by the documented CLI unless one like it exists."""
    if (out / "manifest.json").exists():
        m = read_manifest(out)
        int8 = m.files.get(m.variants.get("int8", ""))
        same_int8 = "int8" not in variants or (int8 is not None and int8.runtime == "openvino") == (
            int8_method == "static"
        )
        if set(variants) <= set(m.variants) and same_int8:
            return out
    cmd = [sys.executable, "-m", "model_export", "bundle", str(checkpoint), "--out", str(out), "--offline"]
    subprocess.run([*cmd, "--variants", *variants, "--int8-method", int8_method], cwd=REPO, check=True)
    return out


def ensure_optimum(checkpoint: Path, out: Path) -> Path:
    """optimum's own export of the checkpoint (what a user of the Optimum pipeline would run)."""
    if (out / "model.onnx").exists():
        return out
    from optimum.onnxruntime import ORTModelForQuestionAnswering  # noqa: PLC0415 - export extra, only for its row

    ORTModelForQuestionAnswering.from_pretrained(str(checkpoint), export=True).save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------- measuring
def summary(name: str, latencies: Sequence[float], wall: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "questions": len(latencies),
        "qps": rate(len(latencies), wall),
        **latency_ms(latencies),
        **extra,
    }


def measure(name: str, call: Callable[[dict[str, str]], object], items: list[dict[str, str]], **extra: Any) -> dict:
    for it in items[:2]:  # untimed: lazy initialisation, first allocations
        call(it)
    latencies = []
    t0 = time.perf_counter()
    for it in items:
        t = time.perf_counter()
        call(it)
        latencies.append(time.perf_counter() - t)
    return summary(name, latencies, time.perf_counter() - t0, **extra)


def windows_config(bundle: Path) -> dict[str, int]:
    m = read_manifest(bundle)
    return {"max_seq_length": m.max_seq_length, "doc_stride": m.doc_stride, "max_query_length": m.max_query_length}


def measure_pipeline(
    name: str, pipe: Callable[..., object], items: list[dict[str, str]], win: dict[str, int], engine: str
):
    """A transformers-style QA pipeline over the items, cutting the bundle's windows (in the pipeline's words)."""
    kw = {
        "max_seq_len": win["max_seq_length"],
        "doc_stride": win["doc_stride"],
        "max_question_len": win["max_query_length"],
    }
    return measure(name, lambda it: pipe(question=it["question"], context=it["context"], **kw), items, engine=engine)


def run_transformers(checkpoint: Path, items: list[dict[str, str]], win: dict[str, int], device: str, threads: int):
    import torch  # noqa: PLC0415 - export extra, seconds to import: only for this row
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline  # noqa: PLC0415 - as torch

    if device == "cuda" and not torch.cuda.is_available():
        return {"name": "transformers", "skipped": "this torch build has no CUDA"}
    torch.set_num_threads(threads)
    model = AutoModelForQuestionAnswering.from_pretrained(str(checkpoint)).eval()
    pipe = pipeline(
        "question-answering",
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(str(checkpoint)),
        device=0 if device == "cuda" else -1,
    )
    return measure_pipeline("transformers", pipe, items, win, f"PyTorch {torch.__version__} fp32, {threads} threads")


def run_optimum(
    checkpoint: Path, onnx_dir: Path, items: list[dict[str, str]], win: dict[str, int], device: str, threads: int
):
    import torch  # noqa: PLC0415 - export extra, seconds to import: only for this row
    from optimum.onnxruntime import ORTModelForQuestionAnswering  # noqa: PLC0415 - export extra, as torch
    from optimum.onnxruntime import pipeline as ort_pipeline  # noqa: PLC0415 - export extra, as torch
    from transformers import AutoTokenizer  # noqa: PLC0415 - export extra, as torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    cuda = device == "cuda"
    model = ORTModelForQuestionAnswering.from_pretrained(
        str(onnx_dir),
        provider="CUDAExecutionProvider" if cuda else "CPUExecutionProvider",
        session_options=opts,
        # optimum's IOBinding binds torch tensors on the device, which a CPU-only torch cannot make
        use_io_binding=cuda and torch.cuda.is_available(),
    )
    provider = model.model.get_providers()[0]
    if cuda and provider != "CUDAExecutionProvider":
        raise RuntimeError(f"optimum: asked for CUDA, ONNX Runtime gave {provider}")
    pipe = ort_pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(str(checkpoint)))
    engine = f"onnxruntime {ort.__version__} fp32 ({provider}), {threads} threads"
    return measure_pipeline("optimum", pipe, items, win, engine)


def run_raw(bundle: Path, items: list[dict[str, str]], device: str, threads: int, variant: str = "fp32"):
    """The bundle's graph opened by ServedModel exactly as the service opens it (runtime picked for the file: static
    int8 runs on OpenVINO on a CPU), one window per call; only the runtime's own call is timed."""
    model = open_model(
        bundle,
        variant=variant,
        providers="cuda" if device == "cuda" else "cpu",
        threads=threads,
        cpu_mem_arena=True,  # as the service runs one window per call (and as optimum's session does)
        batch_windows=1,
    )
    runtime = model.runtime
    assert runtime is not None  # open_model loads it
    pairs = [(it["question"], it["context"]) for it in items]
    windows = sorted(((q, w) for q, ws in enumerate(model.windows(pairs)) for w in ws), key=lambda qw: len(qw[1]))
    # padded before the clock starts, as ServedModel.run pads a lone window for this runtime
    batches = [(q, pad_batch([w], model.pad_id, runtime.pad_multiple)) for q, w in windows]
    model.warmup()  # untimed: every shape a lone window can take, as the service runs them at start-up
    per_question = [0.0] * len(items)
    t0 = time.perf_counter()
    for q, b in batches:
        t = time.perf_counter()
        runtime.run(b)
        per_question[q] += time.perf_counter() - t
    wall = time.perf_counter() - t0
    if model.runtime_pick.name == "openvino":
        label, engine = "raw OpenVINO", runtime.provider
    else:
        label, engine = "raw ORT", f"onnxruntime {ort.__version__} ({runtime.provider})"
    return summary(
        label if variant == "fp32" else f"{label} {variant}",
        per_question,
        wall,
        windows=len(windows),
        engine=f"{engine} {variant}, {threads} threads, one window per call",
    )


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a child process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STAGES = ("inference", "tokenize", "decode")


def stage_seconds(base: str) -> dict[str, float]:
    """The server's total seconds so far in the engine, tokenizing and decoding (qa_*_seconds_sum, /metrics),
    and in handling /answer requests from the first middleware to the response ("request")."""
    text = httpx.get(base + "/metrics", timeout=10).text
    sums = {stage: metric(text, f"qa_{stage}_seconds_sum") for stage in STAGES}
    # a labelled series appears with its first request
    sums["request"] = metric_by(text, "qa_request_duration_seconds_sum", "endpoint").get("/answer", 0.0)
    return sums


def run_service(bundle: Path, variant: str, n: int, device: str) -> list[dict[str, Any]]:
    env = {"QA_MODEL_VARIANT": variant, "QA_PROVIDERS": "cuda" if device == "cuda" else "cpu"}
    rows = []
    with server(env, str(bundle)) as (proc, base):
        for clients in CLIENTS:
            cpu0, before = proc_cpu_s(proc.pid), stage_seconds(base)
            cmd = [sys.executable, str(REPO / "bench" / "load.py"), "--url", base, "--concurrency", str(clients)]
            cmd += ["--questions", str(n), "--requests", str(n), "--warmup", str(min(2, n))]
            out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            # /metrics also counts load.py's warmup requests: take the timed requests' share of the engine time
            warmup = min(2, n)
            after = stage_seconds(base)
            spent = {k: (after[k] - before[k]) * n / (n + warmup) for k in after}
            engine_s = spent["inference"]
            rows.append(
                {
                    "name": f"service {variant}, {clients} client{'s' if clients > 1 else ''}",
                    "questions": r["requests"],
                    "qps": r["throughput_rps"],
                    "p50_ms": r["p50_ms"],
                    "p99_ms": r["p99_ms"],
                    "errors": r["errors"],
                    "engine": f"{r['provider']} {r['precision']}",
                    "mean_windows_per_batch": r["mean_windows_per_batch"],
                    "wall_s": r["wall_s"],
                    "load_generator_cpu_s": r["client_cpu_s"],
                    # includes the warmup requests; those are few
                    "server_cpu_s": round(proc_cpu_s(proc.pid) - cpu0, 2),
                    "engine_s": round(engine_s, 2),
                    "tokenize_s": round(spent["tokenize"], 2),
                    "decode_s": round(spent["decode"], 2),
                    # > 0: tokenizing and decoding ran while the engine worked (they run off the event loop)
                    "overlap_s": round(sum(spent[k] for k in STAGES) - r["wall_s"], 2),
                    # what HTTP, tokenizing, decoding and queueing add to the engine's own time, one client
                    # at a time: wall time the engine was not running, over engine time
                    "overhead_vs_engine": round(r["wall_s"] / engine_s - 1, 3) if clients == 1 else None,
                    # the same inside the server only: without the load generator's own time and the loopback
                    "server_overhead_vs_engine": round(spent["request"] / engine_s - 1, 3) if clients == 1 else None,
                }
            )
    return rows


# --------------------------------------------------------------------------- report
def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each measured row's q/s over the best q/s among the peers (transformers, optimum); None without a peer."""
    peer_qps = [r["qps"] for r in rows if r["name"] in PEERS and r.get("qps")]
    best = max(peer_qps) if peer_qps else None
    return [{**r, "vs_best_peer": round(r["qps"] / best, 2) if best and r.get("qps") else None} for r in rows]


def notes(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    parts = [row.get("engine", "")]
    if "windows" in row:
        parts.append(f"{row['windows']} windows")
    if "load_generator_cpu_s" in row:
        parts.append(
            f"load generator {row['load_generator_cpu_s']:.2f} s CPU, server {row['server_cpu_s']:.1f} s CPU,"
            f" in {row['wall_s']:.1f} s"
        )
    if row.get("overhead_vs_engine") is not None:
        parts.append(f"overhead {100 * row['overhead_vs_engine']:.1f}% of engine time")
    if row.get("server_overhead_vs_engine") is not None:
        parts.append(f"{100 * row['server_overhead_vs_engine']:.1f}% inside the server")
    if "tokenize_s" in row:
        parts.append(
            f"engine {row['engine_s']:.1f} s, tokenize {row['tokenize_s']:.2f} s, decode {row['decode_s']:.2f} s,"
            f" overlapped {max(row['overlap_s'], 0):.2f} s"
        )
    if row.get("errors"):
        parts.append(f"{row['errors']} errors")
    return "; ".join(p for p in parts if p)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = ["| row | q/s | p50 (ms) | p99 (ms) | vs best peer | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("vs_best_peer")
        lines.append(
            f"| {r['name']} | {cell(r.get('qps'), '.2f')} | {cell(r.get('p50_ms'), '.1f')} | "
            f"{cell(r.get('p99_ms'), '.1f')} | {'n/a' if ratio is None else f'{ratio:.2f}x'} | {notes(r)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, command: str, machine: str) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 - an optional package, only for the plot

    shown = [r for r in rows if r.get("qps")]
    fig = Figure(figsize=(8, 0.45 * len(shown) + 1.6), dpi=110)
    ax = fig.subplots()
    names = [r["name"] for r in shown][::-1]
    qps = [r["qps"] for r in shown][::-1]
    colors = ["#4c72b0" if r["name"].startswith("service") else "#999999" for r in shown][::-1]
    ax.barh(names, qps, color=colors)
    for y, r in enumerate(shown[::-1]):
        ax.text(
            r["qps"],
            y,
            f"  {r['qps']:.2f} q/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_xlim(0, max(qps) * 1.6)
    ax.set_xlabel("questions per second (higher is better)")
    ax.set_title(f"Extractive QA, e5-small shapes, {shown[0]['questions']} KorQuAD test questions", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.text(0.01, 0.01, f"{command}\n{machine}", fontsize=6.5, color="grey")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=100, help="first N questions of the test articles")
    ap.add_argument("--skip", nargs="*", default=[], choices=ROWS, help="rows to leave out")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="threads for the in-process peers (default: CPU quota)")
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the checkpoint and the ONNX files are kept")
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="bundle for the raw and service rows (default: built under --cache); rows of a variant it lacks are "
        "reported as skipped",
    )
    ap.add_argument(
        "--variants", nargs="+", default=None, help="bundle variants to build (default: fp32 + the extra row's)"
    )
    ap.add_argument("--prepare-only", action="store_true", help="build the checkpoint, bundle and optimum export; exit")
    ap.add_argument("--json", type=Path, default=CACHE / "peers.json")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "peers.png")
    args = ap.parse_args(argv)
    threads = args.threads or cpu_quota()
    extra = "fp16" if args.device == "cuda" else "int8"
    peers = [r for r in PEERS if r not in args.skip]

    # the checkpoint feeds the peers and the default bundle; a given bundle with no peer row needs none
    checkpoint = args.cache / "checkpoint"
    if args.prepare_only or peers or args.bundle is None:
        checkpoint = ensure_checkpoint(checkpoint)
    bundle = args.bundle or ensure_bundle(checkpoint, args.cache / "bundle", args.variants or ["fp32", extra])
    if args.prepare_only:
        print(ensure_optimum(checkpoint, args.cache / "optimum"))
        print(bundle)
        return
    win = windows_config(bundle)
    have = read_manifest(bundle).variants
    items = held_out_items(args.questions)

    rows: list[dict[str, Any]] = []
    if "transformers" not in args.skip:
        rows.append(run_transformers(checkpoint, items, win, args.device, threads))
    if "optimum" not in args.skip:
        onnx_dir = ensure_optimum(checkpoint, args.cache / "optimum")
        rows.append(run_optimum(checkpoint, onnx_dir, items, win, args.device, threads))
    for row in ("raw", "service"):
        if row in args.skip:
            continue
        for variant in ("fp32", extra):
            if variant not in have:
                rows.append({"name": f"{row} {variant}", "skipped": f"{bundle} has no {variant} variant"})
            elif row == "raw":
                rows.append(run_raw(bundle, items, args.device, threads, variant))
            else:
                rows += run_service(bundle, variant, len(items), args.device)
    rows = with_ratios(rows)

    command = " ".join(["python", "bench/peers.py", *(argv if argv is not None else sys.argv[1:])])
    machine = f"{cpu_name()}, {cpu_quota()} CPUs" + (", CUDA" if args.device == "cuda" else "")
    table = markdown_table(rows)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "machine": machine, "device": args.device, "windows": win, "rows": rows}
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if any(r.get("qps") for r in rows):
        plot(rows, args.plot, command, machine)
    print(f"\nJSON: {args.json}\nplot: {args.plot}")


if __name__ == "__main__":
    main()
