"""Closed-loop load generator for a running service: KorQuAD test questions, N concurrent clients.

    python bench/load.py --url http://127.0.0.1:8000 --concurrency 8 --requests 400
    python bench/load.py --concurrency 16 --questions 100 --requests 100 --warmup 2   # what bench/peers.py runs

Prints one JSON line: throughput, latency percentiles, the server's batch-size histogram delta, and the CPU time
this load generator itself used (it usually shares the machine with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import time
from pathlib import Path

import httpx

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"


def load_items(path: Path, articles: slice) -> list[dict[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))["data"][articles]
    return [
        {"question": qa["question"], "context": p["context"]} for a in data for p in a["paragraphs"] for qa in p["qas"]
    ]


def joined_paragraphs(path: Path, n: int, per_context: int = 1) -> list[dict[str, str]]:
    """n test-split items whose context joins `per_context` consecutive paragraphs (the question is the last's)."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"][112:]
    paragraphs = [p for article in data for p in article["paragraphs"]]
    return [
        {
            "question": paragraphs[i + per_context - 1]["qas"][0]["question"],
            "context": " ".join(p["context"] for p in paragraphs[i : i + per_context]),
        }
        for i in range(n)
    ]


def batch_hist(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of qa_batch_windows."""
    s = re.search(r"^qa_batch_windows_sum ([0-9.e+]+)$", metrics_text, re.M)
    c = re.search(r"^qa_batch_windows_count ([0-9.e+]+)$", metrics_text, re.M)
    return (float(s.group(1)) if s else 0.0, float(c.group(1)) if c else 0.0)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(url: str, items: list[dict[str, str]], concurrency: int, n: int, warmup: int = 0) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(warmup):  # untimed: first connections, first calls
            await client.post("/answer", json=items[i % len(items)])
        before = batch_hist((await client.get("/metrics")).text)

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                t0 = time.perf_counter()
                r = await client.post("/answer", json=items[i % len(items)])
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        after = batch_hist((await client.get("/metrics")).text)
        model = (await client.get("/v1/models")).json()["data"][0]

    lat = sorted(latencies)
    batches = after[1] - before[1]
    return {
        "model": model["name"],
        "precision": model["precision"],
        "provider": model["execution_provider"],
        "concurrency": concurrency,
        "requests": n,
        "errors": errors,
        "throughput_rps": round(n / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p90_ms": round(1000 * lat[int(0.9 * (len(lat) - 1))], 1),
        "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1),
        "mean_windows_per_batch": round((after[0] - before[0]) / batches, 2) if batches else None,
        "wall_s": round(wall, 3),
        "client_cpu_s": round(cpu, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--questions", type=int, default=None, help="cycle over only the first N test questions")
    ap.add_argument("--warmup", type=int, default=0, help="untimed requests before the timed ones")
    args = ap.parse_args()
    items = load_items(args.data, slice(112, 140))[: args.questions]  # the held-out test articles
    print(json.dumps(asyncio.run(run(args.url, items, args.concurrency, args.requests, args.warmup))))


if __name__ == "__main__":
    main()
