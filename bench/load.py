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
import resource
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/load.py` finds the bench package

from bench.common import (
    DATA,
    closed_loop,
    histogram,
    joined_paragraphs,  # noqa: F401 - tests/integration/test_resilience.py imports it from here
    latency_ms,
    load_items,
    rate,
    requests_of,
)


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(url: str, items: list[dict[str, str]], concurrency: int, n: int, warmup: int = 0) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for i in range(warmup):  # untimed: first connections, first calls
            await http.post("/answer", json=items[i % len(items)])
        before = histogram((await http.get("/metrics")).text, "qa_batch_windows")
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        replies = await closed_loop(http, concurrency, items, requests_of(n, len(items)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        after = histogram((await http.get("/metrics")).text, "qa_batch_windows")
        model = (await http.get("/v1/models")).json()["data"][0]

    batches = after[1] - before[1]
    return {
        "model": model["name"],
        "precision": model["precision"],
        "provider": model["execution_provider"],
        "concurrency": concurrency,
        "requests": n,
        "errors": sum(r.status != 200 for r in replies),
        "throughput_rps": rate(n, wall),
        **latency_ms([r.seconds for r in replies], (0.5, 0.9, 0.99)),
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
    items = load_items(args.data)[: args.questions]  # the held-out test articles
    print(json.dumps(asyncio.run(run(args.url, items, args.concurrency, args.requests, args.warmup))))


if __name__ == "__main__":
    main()
