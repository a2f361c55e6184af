"""Load, overload, head-of-line and soak experiments against a real `python -m app` process.

    python bench/resilience.py hol        # small requests while a big /batch_answer runs; the 1 MB body
    python bench/resilience.py overload   # queue 16 windows, deadline 2 s, 64 clients for 30 s
    python bench/resilience.py soak       # RSS over 2,000 requests at concurrency 4

Each starts its own server on a free port with the settings it needs (the shipped model unless
--model-dir says otherwise), drives it from this process, and prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from load import DATA, joined_paragraphs, load_items  # noqa: E402
from service import server  # noqa: E402


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(1000 * s[min(len(s) - 1, int(q * (len(s) - 1)))], 1)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- head-of-line blocking
BIG_ITEMS = 16  # three-paragraph contexts: about 60 windows, well inside the 30 s deadline on 2 cores


async def hol(base: str) -> dict[str, object]:
    small_items = load_items(DATA, slice(112, 140))
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        # 1) the body of the original report: 32 contexts of about 30 kB (10,000 Korean characters) each
        text = " ".join(p["context"] for p in joined_paragraphs(DATA, 80))
        huge = {"items": [{"question": "이 문서의 주제는?", "context": text[k * 100 :][:10_000]} for k in range(32)]}
        t0 = time.perf_counter()
        r = await client.post("/batch_answer", json=huge)
        refused = {
            "status": r.status_code,
            "seconds": round(time.perf_counter() - t0, 2),
            "body_kB": len(json.dumps(huge, ensure_ascii=False).encode()) // 1000,
            "message": r.json().get("error", {}).get("message"),
        }

        # 2) a big batch the server can finish in time, with small requests arriving all along
        big = {"items": joined_paragraphs(DATA, BIG_ITEMS, 3)}
        small_lat: list[float] = []
        small_status: Counter[int] = Counter()
        done = asyncio.Event()

        async def big_call() -> tuple[int, float, int]:
            t = time.perf_counter()
            resp = await client.post("/batch_answer", json=big)
            done.set()
            windows = sum(x["windows"] for x in resp.json()["results"]) if resp.status_code == 200 else 0
            return resp.status_code, time.perf_counter() - t, windows, resp.json().get("error")

        async def small_client(k: int) -> None:
            i = k
            while not done.is_set():
                t = time.perf_counter()
                resp = await client.post("/answer", json=small_items[i % len(small_items)])
                if not done.is_set():  # both counts cover only the requests that overlapped the big one
                    small_status[resp.status_code] += 1
                    small_lat.append(time.perf_counter() - t)
                i += 2
                await asyncio.sleep(0.2)

        task = asyncio.create_task(big_call())
        await asyncio.sleep(0.3)  # the big one is queued first
        await asyncio.gather(*(small_client(k) for k in range(2)))
        status, seconds, windows, error = await task
    return {
        "refused_1MB_batch": refused,
        "big_batch": {
            "status": status,
            "items": BIG_ITEMS,
            "windows": windows,
            "seconds": round(seconds, 2),
            "error": error,
        },
        "small_while_big_runs": {
            "n": len(small_lat),
            "statuses": dict(small_status),
            "p50_ms": pct(small_lat, 0.5),
            "p99_ms": pct(small_lat, 0.99),
            "max_ms": pct(small_lat, 1.0),
        },
    }


# --------------------------------------------------------------------------- overload
async def overload(base: str, clients: int, seconds: float) -> dict[str, object]:
    items = load_items(DATA, slice(112, 140))
    statuses: Counter[int] = Counter()
    ok_windows = 0
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=clients)) as client:
        before = (await client.get("/metrics")).text
        stop = time.monotonic() + seconds

        async def one(k: int) -> None:
            nonlocal ok_windows
            i = k
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = await client.post("/answer", json=items[i % len(items)])
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    ok_windows += r.json()["windows"]
                    latencies.append(time.perf_counter() - t)
                elif r.status_code == 429:
                    await asyncio.sleep(0.05)  # a client that backs off a little, not one that spins
                i += clients

        await asyncio.gather(*(one(k) for k in range(clients)))
        after = (await client.get("/metrics")).text
    computed = metric(after, "qa_batch_windows_sum") - metric(before, "qa_batch_windows_sum")
    return {
        "clients": clients,
        "seconds": seconds,
        "statuses": dict(sorted(statuses.items())),
        "windows_computed": int(computed),
        "windows_for_200s": ok_windows,
        "share_of_computed_windows_for_200s": round(ok_windows / computed, 3) if computed else None,
        "p99_ms_of_200s": pct(latencies, 0.99),
    }


# --------------------------------------------------------------------------- soak
async def soak(base: str, pid: int, requests: int, concurrency: int, warmup: int) -> dict[str, object]:
    items = load_items(DATA, slice(112, 140))
    samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
    statuses: Counter[int] = Counter()
    counter = iter(range(requests))
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker() -> None:
            for i in counter:
                r = await client.post("/answer", json=items[i % len(items)])
                statuses[r.status_code] += 1
                if (i + 1) % 100 == 0:
                    samples.append((i + 1, rss_mb(pid)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    after_warmup = next(mb for n, mb in samples if n >= warmup)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "statuses": dict(statuses),
        "rss_mb_start": round(samples[0][1], 1),
        "rss_mb_after_warmup": round(after_warmup, 1),
        "rss_mb_end": round(samples[-1][1], 1),
        "rss_mb_peak": round(max(mb for _, mb in samples), 1),
        "growth_after_warmup_mb": round(samples[-1][1] - after_warmup, 1),
        "rss_mb_every_100": [round(mb, 1) for _, mb in samples],
    }


def plot_rss(result: dict[str, object], path: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = list(result["rss_mb_every_100"])  # type: ignore[call-overload]
    x = [100 * i for i in range(len(rss))]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(x, rss, marker="o", markersize=3, label="server RSS")
    ax.axhline(float(result["rss_mb_after_warmup"]), color="grey", linestyle="--", linewidth=1, label="after warmup")  # type: ignore[arg-type]
    ax.set_xlabel("requests served")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max(rss) * 1.15)
    ax.set_title(f"Soak: {result['requests']} KorQuAD requests at concurrency {result['concurrency']}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.text(0.01, 0.01, command, fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["hol", "overload", "soak"])
    ap.add_argument("--model-dir", default=None, help="bundle to serve (default: the shipped models/default)")
    ap.add_argument("--clients", type=int, default=64, help="overload: concurrent clients")
    ap.add_argument("--seconds", type=float, default=30.0, help="overload: duration")
    ap.add_argument("--requests", type=int, default=2000, help="soak: requests")
    ap.add_argument("--concurrency", type=int, default=4, help="soak: concurrent clients")
    ap.add_argument("--warmup", type=int, default=200, help="soak: requests before the RSS baseline")
    ap.add_argument("--plot", type=Path, default=None, help="soak: also draw RSS over requests into this PNG")
    args = ap.parse_args()
    if args.experiment == "hol":
        with server({}, args.model_dir) as (_, base):
            result = asyncio.run(hol(base))
    elif args.experiment == "overload":
        env = {"QA_MAX_QUEUE_WINDOWS": "16", "QA_MAX_WINDOWS_PER_REQUEST": "16", "QA_REQUEST_TIMEOUT_S": "2"}
        with server(env, args.model_dir) as (_, base):
            result = asyncio.run(overload(base, args.clients, args.seconds))
    else:
        with server({}, args.model_dir) as (proc, base):
            result = asyncio.run(soak(base, proc.pid, args.requests, args.concurrency, args.warmup))
    command = " ".join(["python", *sys.argv])
    if args.experiment == "soak" and args.plot is not None:
        plot_rss(result, args.plot, command)
    print(json.dumps({"experiment": args.experiment, "command": command, **result}, ensure_ascii=False))


if __name__ == "__main__":
    main()
