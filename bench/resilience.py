"""Load, overload, fairness, admission, soak and hostile-client experiments against a real `python -m app` process.

    python bench/resilience.py hol          # small requests while a big /batch_answer runs; the 1 MB body
    python bench/resilience.py overload     # queue 16 windows, deadline 2 s, 64 clients for 30 s
    python bench/resilience.py starvation   # a 5-window request 10 times among 8 clients looping one-window questions
    python bench/resilience.py mixed        # 50 clients, 60 s, contexts of 1-6 paragraphs: latency and 504s by windows
    python bench/resilience.py admission    # a burst, then, idle, a ~101-window /batch_answer: admitted? (5 times)
    python bench/resilience.py soak         # RSS over 2,000 requests at concurrency 4
    python bench/resilience.py headers      # 16 clients send 1 MiB headers: status and time of each, RSS, /livez
    python bench/resilience.py slow         # 250 slow-header and slow-body connections: still open after the timeouts?
    python bench/resilience.py disconnects  # 100 mixed disconnects (mid-upload among them), then /metrics' 500s

The experiment may also be named with --mode (`--mode starvation`). Each starts its own server on a free port with
the settings it needs (the shipped model unless --model-dir says otherwise), drives it from this process, and
prints one JSON object. --clients, --seconds and --repeats size the experiments that take them (defaults in
--help); docs/benchmarks.md says what each field means.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import select
import socket
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/resilience.py` finds the bench package

from app.settings import DEFAULT_MODEL_DIR, Settings
from bench.common import (
    DATA,
    Item,
    Reply,
    closed_loop,
    describe,
    held_out_items,
    held_out_paragraphs,
    join,
    joined_paragraphs,
    latency_ms,
    metric,
    metric_by,
    open_model,
    post,
    rate,
    requests_of,
    server,
    statuses,
    until,
    windows_needed,
)

EXPERIMENTS = ("hol", "overload", "starvation", "mixed", "admission", "soak", "headers", "slow", "disconnects")
DEFAULT_CLIENTS = {"overload": 64, "headers": 16, "starvation": 8, "mixed": 50, "admission": 32}
DEFAULT_SECONDS = {"overload": 30.0, "mixed": 60.0}
DEFAULT_REPEATS = {"starvation": 10, "admission": 5}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_after(seconds: float) -> Callable[[], bool]:
    """A stop condition for `until`: true once `seconds` have passed from now."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


def http_pool(base: str, clients: int, timeout: float = 120) -> httpx.AsyncClient:
    """One connection pool for `clients` looping clients and a few more requests beside them."""
    return httpx.AsyncClient(base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=clients + 4))


# --------------------------------------------------------------------------- head-of-line blocking
BIG_ITEMS = 16  # three-paragraph contexts: about 60 windows, well inside the 30 s deadline on 2 cores


async def hol(base: str) -> dict[str, object]:
    small_items = held_out_items()
    async with http_pool(base, 2) as http:
        # 1) the body of the original report: 32 contexts of about 30 kB (10,000 Korean characters) each
        text = " ".join(p["context"] for p in joined_paragraphs(DATA, 80))
        huge = {"items": [{"question": "이 문서의 주제는?", "context": text[k * 100 :][:10_000]} for k in range(32)]}
        r = await post(http, "/batch_answer", huge)
        refused = {
            "status": r.status,
            "seconds": round(r.seconds, 2),
            "body_kB": len(json.dumps(huge, ensure_ascii=False).encode()) // 1000,
            "message": r.body.get("error", {}).get("message"),
        }

        # 2) a big batch the server can finish in time, with small requests arriving all along
        big = {"items": joined_paragraphs(DATA, BIG_ITEMS, 3)}
        done = asyncio.Event()

        async def big_call() -> Reply:
            reply = await post(http, "/batch_answer", big)
            done.set()
            return reply

        task = asyncio.create_task(big_call())
        await asyncio.sleep(0.3)  # the big one is queued first
        small = await closed_loop(http, 2, small_items, until(done.is_set, len(small_items)), pause=lambda _: 0.2)
        b = await task
    overlapped = [s for s in small if s.ended <= b.ended]  # only the requests that overlapped the big one
    return {
        "refused_1MB_batch": refused,
        "big_batch": {
            "status": b.status,
            "items": BIG_ITEMS,
            "windows": sum(x["windows"] for x in b.body["results"]) if b.status == 200 else 0,
            "seconds": round(b.seconds, 2),
            "error": b.body.get("error"),
        },
        "small_while_big_runs": describe(overlapped, (0.5, 0.99, 1.0)),
    }


# --------------------------------------------------------------------------- overload
async def overload(base: str, clients: int, seconds: float) -> dict[str, object]:
    items = held_out_items()
    async with http_pool(base, clients, timeout=30) as http:
        before = (await http.get("/metrics")).text
        # a client that backs off a little after a 429, not one that spins
        replies = await closed_loop(
            http, clients, items, until(stop_after(seconds), len(items)), pause=lambda r: 0.05 * (r.status == 429)
        )
        after = (await http.get("/metrics")).text
    ok = [r for r in replies if r.status == 200]
    ok_windows = sum(r.body["windows"] for r in ok)
    computed = metric(after, "qa_batch_windows_sum") - metric(before, "qa_batch_windows_sum")
    return {
        "clients": clients,
        "seconds": seconds,
        "statuses": statuses(replies),
        "windows_computed": int(computed),
        "windows_for_200s": ok_windows,
        "share_of_computed_windows_for_200s": round(ok_windows / computed, 3) if computed else None,
        "p99_ms_of_200s": latency_ms([r.seconds for r in ok], (0.99,))["p99_ms"],
    }


# --------------------------------------------------------------------------- fairness: starvation, mixed traffic
LONG_WINDOWS = 5
STARVATION_BOUND = 12  # the bar: the long request's latency within 12x its idle latency


async def long_request(http: httpx.AsyncClient, items: Sequence[Item], windows: int) -> Item:
    """As tests/integration/test_fairness.py builds it: distinct test paragraphs joined, one more at a time, until
    the service reports `windows` windows for the first one's question; from the next paragraph on if a join
    jumps past `windows`."""
    contexts = list(dict.fromkeys(it["context"] for it in items))  # distinct, in order
    questions = {it["context"]: it["question"] for it in reversed(items)}  # each paragraph's first question
    for start, first in enumerate(contexts):
        parts: list[str] = []
        for context in contexts[start:]:
            parts.append(context)
            body = {"question": questions[first], "context": "\n".join(parts)}
            reply = await post(http, "/answer", body)
            if reply.status != 200:
                raise RuntimeError(f"building the {windows}-window request: {reply.status} {reply.body}")
            if reply.body["windows"] >= windows:
                break
        if reply.body["windows"] == windows:
            return body
    raise RuntimeError(f"no run of test paragraphs makes exactly {windows} windows")


def starvation_report(idle: Sequence[float], longs: Sequence[Reply], looping: Sequence[Reply], t0: float, t1: float):
    """The long request's runs against its idle median, and what the looping clients got meanwhile."""
    idle_s = statistics.median(idle)
    during = [r for r in looping if t0 <= r.ended <= t1]
    return {
        "long_windows": LONG_WINDOWS,
        "idle_ms": [round(1000 * s, 1) for s in idle],
        "idle_median_ms": round(1000 * idle_s, 1),
        "runs": [
            {"status": r.status, "ms": round(1000 * r.seconds, 1), "x_idle": round(r.seconds / idle_s, 2)}
            for r in longs
        ],
        f"runs_200_within_{STARVATION_BOUND}x_idle": sum(
            r.status == 200 and r.seconds <= STARVATION_BOUND * idle_s for r in longs
        ),
        "repeats": len(longs),
        "clients_meanwhile": {"throughput_rps": rate(len(during), t1 - t0), **describe(during)},
    }


async def starvation(base: str, model_dir: Path, clients: int, repeats: int) -> dict[str, object]:
    items = held_out_items()
    needed = windows_needed(open_model(model_dir, load=False), items)
    one_window = [it for it, n in zip(items, needed, strict=True) if n == 1]
    async with http_pool(base, clients) as http:
        long = await long_request(http, items, LONG_WINDOWS)
        idle = [(await post(http, "/answer", long)).seconds for _ in range(3)]  # alone: the median is the bar's base
        stop = asyncio.Event()
        looping: list[Reply] = []
        loop = asyncio.create_task(
            closed_loop(http, clients, one_window, until(stop.is_set, len(one_window)), replies=looping)
        )
        while len(looping) < 2 * clients and not loop.done():  # every client is looping
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        longs = [await post(http, "/answer", long) for _ in range(repeats)]
        t1 = time.perf_counter()
        stop.set()
        await loop
    return {"clients": clients, **starvation_report(idle, longs, looping, t0, t1)}


MIXED_MAX_PARAGRAPHS = 6  # 1 to 6 consecutive paragraphs: requests of 1 to about 8 windows


def mixed_items(seed: int = 0) -> list[Item]:
    """One item per test paragraph: it and the next 0 to 5 joined (seeded), the last one's question; shuffled."""
    rng = random.Random(seed)
    paragraphs = held_out_paragraphs()
    items = [join(paragraphs[i : i + rng.randint(1, MIXED_MAX_PARAGRAPHS)]) for i in range(len(paragraphs))]
    rng.shuffle(items)
    return items


def mixed_report(replies: Sequence[Reply], needed: Sequence[int], wall: float) -> dict[str, object]:
    """Replies grouped by the windows their request needed."""
    by: defaultdict[int, list[Reply]] = defaultdict(list)
    for r in replies:
        by[needed[r.item]].append(r)
    return {
        "requests": len(replies),
        "throughput_rps": rate(len(replies), wall),
        "statuses": statuses(replies),
        "504_needing_at_most_4_windows": sum(r.status == 504 and needed[r.item] <= 4 for r in replies),
        # the service's own count against ours: they must agree, or the grouping is wrong
        "200s_reporting_other_windows": sum(
            r.status == 200 and r.body.get("windows") != needed[r.item] for r in replies
        ),
        "by_windows_needed": {str(w): describe(by[w]) for w in sorted(by)},
    }


async def mixed(base: str, model_dir: Path, clients: int, seconds: float) -> dict[str, object]:
    items = mixed_items()
    needed = windows_needed(open_model(model_dir, load=False), items)
    async with http_pool(base, clients) as http:
        t0 = time.perf_counter()
        replies = await closed_loop(http, clients, items, until(stop_after(seconds), len(items)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "seconds": seconds, **mixed_report(replies, needed, wall)}


# --------------------------------------------------------------------------- admission after a burst
def big_batch(model_dir: Path, windows: int, max_items: int) -> tuple[list[Item], int]:
    """Test items of consecutive paragraphs (3 per context, more if 3 would need over `max_items` items) whose
    windows add up to `windows` or just over: a /batch_answer body; with the windows it needs."""
    model = open_model(model_dir, load=False)
    for per_context in range(3, MIXED_MAX_PARAGRAPHS + 1):
        pool = joined_paragraphs(DATA, len(held_out_paragraphs()) - per_context + 1, per_context)
        items, total = [], 0
        for item, n in zip(pool, windows_needed(model, pool), strict=True):
            if total >= windows:
                break
            items.append(item)
            total += n
        if len(items) <= max_items:
            return items, total
    raise RuntimeError(f"{windows} windows do not fit {max_items} items")


async def admission(base: str, model_dir: Path, burst: int, repeats: int, windows: int, idle_s: float):
    items, needed = big_batch(model_dir, windows, Settings().max_batch_items)
    body = {"items": items}
    burst_items = joined_paragraphs(DATA, burst, 3)
    runs = []
    async with http_pool(base, burst) as http:
        for _ in range(repeats):
            # concurrent multi-window requests: contention inflates the server's estimate of a window's cost
            burst_replies = await asyncio.gather(*(post(http, "/answer", it) for it in burst_items))
            await asyncio.sleep(idle_s)
            queued = metric((await http.get("/metrics")).text, "qa_queue_windows")
            r = await post(http, "/batch_answer", body)
            runs.append(
                {
                    "burst_statuses": statuses(burst_replies),
                    "queue_windows_before": int(queued),
                    "status": r.status,
                    "seconds": round(r.seconds, 2),
                    "windows": sum(x["windows"] for x in r.body["results"]) if r.status == 200 else None,
                    "error": r.body.get("error", {}).get("code"),
                }
            )
    return {
        "items": len(items),
        "windows_needed": needed,
        "body_kB": len(json.dumps(body, ensure_ascii=False).encode()) // 1000,
        "burst": burst,
        "idle_s": idle_s,
        "runs": runs,
        "admitted": sum(r["status"] == 200 for r in runs),
        "repeats": repeats,
    }


# --------------------------------------------------------------------------- soak
async def soak(base: str, pid: int, requests: int, concurrency: int, warmup: int) -> dict[str, object]:
    items = held_out_items()
    samples: list[tuple[int, float]] = [(0, rss_mb(pid))]
    served = itertools.count(1)

    def every_100(_reply: Reply) -> float:
        n = next(served)
        if n % 100 == 0:
            samples.append((n, rss_mb(pid)))
        return 0.0

    async with http_pool(base, concurrency, timeout=60) as http:
        replies = await closed_loop(http, concurrency, items, requests_of(requests, len(items)), pause=every_100)
    after_warmup = next((mb for n, mb in samples if n >= warmup), samples[-1][1])
    return {
        "requests": requests,
        "concurrency": concurrency,
        "statuses": statuses(replies),
        "rss_mb_start": round(samples[0][1], 1),
        "rss_mb_after_warmup": round(after_warmup, 1),
        "rss_mb_end": round(samples[-1][1], 1),
        "rss_mb_peak": round(max(mb for _, mb in samples), 1),
        "growth_after_warmup_mb": round(samples[-1][1] - after_warmup, 1),
        "rss_mb_every_100": [round(mb, 1) for _, mb in samples],
    }


# --------------------------------------------------------------------------- hostile clients
def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def status_of(raw: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError as e:
        out += f"<{type(e).__name__}>".encode()
    return out


class Sampler:
    """Samples a value (the server's RSS, its open files) every `every_s` in a thread while the block runs."""

    def __init__(self, read, every_s: float = 0.02) -> None:
        self.read, self.every_s, self.values = read, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(self.read())
            time.sleep(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def livez_while(base: str, stop: threading.Event, out: list[float]) -> None:
    """/livez latency (ms) over and over until `stop`: a flood must not slow the probes."""
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get("/livez")
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)


def header_flood(base: str, pid: int, clients: int, header_mib: float) -> dict[str, object]:
    """`clients` connections at once, each sending a request whose headers are `header_mib` MiB, all of it before
    reading (as a plain client does); the status and time of each, the server's RSS and /livez meanwhile."""
    port = port_of(base)
    header = b"GET /livez HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * int(header_mib * (1 << 20)) + b"\r\n\r\n"
    results: list[tuple[int | None, float, str]] = []

    def one() -> None:
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            try:
                s.sendall(header)
                sent = "all"
            except OSError as e:
                sent = f"cut: {type(e).__name__}"
            raw = read_response(s, 60)
        results.append((status_of(raw), round(time.perf_counter() - t, 3), sent))

    time.sleep(1.0)
    rss_idle = rss_mb(pid)
    stop, livez_ms = threading.Event(), []
    probe = threading.Thread(target=livez_while, args=(base, stop, livez_ms), daemon=True)
    probe.start()
    with Sampler(lambda: rss_mb(pid)) as rss:
        threads = [threading.Thread(target=one) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stop.set()
    probe.join()
    time.sleep(1.0)
    return {
        "clients": clients,
        "header_mib": header_mib,
        "statuses": dict(Counter(s for s, _, _ in results)),
        "sent": dict(Counter(sent for _, _, sent in results)),
        "seconds_each": sorted(sec for _, sec, _ in results),
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb_peak_during": round(max(rss.values, default=rss_idle), 1),
        "rss_mb_after": round(rss_mb(pid), 1),
        "livez_ms_max_during": round(max(livez_ms, default=0), 1),
        "livez_n_during": len(livez_ms),
    }


def slow_clients(base: str, pid: int, connections: int, seconds: float, byte_every_s: float) -> dict[str, object]:
    """Half the connections send their headers, half their body, one byte every `byte_every_s`, for `seconds`:
    how many the server has closed (and with what status), and its open files before, during and after."""
    port = port_of(base)
    files_before = open_files(pid)
    head = b"GET /livez HTTP/1.1\r\nhost: x\r\nx-slow: "
    post = (
        b"POST /answer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
        b'{"question": "'
    )
    conns: dict[socket.socket, str] = {}
    for i in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        kind = "header" if i % 2 == 0 else "body"
        s.sendall(head if kind == "header" else post)
        s.setblocking(False)
        conns[s] = kind
    closed: dict[str, Counter[str]] = {"header": Counter(), "body": Counter()}
    files_during = []
    t0 = time.monotonic()
    next_byte = t0
    while time.monotonic() - t0 < seconds and conns:
        readable, _, _ = select.select(list(conns), [], [], 0.2)
        for s in readable:
            try:
                raw = s.recv(65536)
            except OSError:
                raw = b""
            closed[conns.pop(s)][str(status_of(raw) or "closed")] += 1
            s.close()
        if time.monotonic() >= next_byte:
            next_byte += byte_every_s
            files_during.append(open_files(pid))
            for s in list(conns):
                try:
                    s.send(b"a", socket.MSG_NOSIGNAL)
                except OSError:
                    closed[conns.pop(s)]["reset"] += 1
                    s.close()
    still_open = Counter(conns.values())
    for s in conns:
        s.close()
    time.sleep(1.0)
    return {
        "connections": connections,
        "seconds": seconds,
        "byte_every_s": byte_every_s,
        "still_open_at_end": {"header": still_open["header"], "body": still_open["body"]},
        "closed_by_server": {k: dict(v) for k, v in closed.items()},
        "open_files_before": files_before,
        "open_files_peak_during": max(files_during, default=files_before),
        "open_files_at_end_of_run": files_during[-1] if files_during else files_before,
        "open_files_after_clients_closed": open_files(pid),
    }


def disconnect_storm(base: str, n: int, seed: int = 0) -> dict[str, object]:
    """`n` connections that each go away at a different stage, then /metrics: how many 500s (there must be none)."""
    port = port_of(base)
    items = held_out_items()
    rnd = random.Random(seed)
    kinds = ["connect", "mid_head", "mid_upload", "queued", "during_413_drain"]
    done: Counter[str] = Counter()
    before = metric_by(httpx.get(base + "/metrics").text, "qa_requests_total", "outcome", endpoint="/answer")
    for i in range(n):
        kind = kinds[i % len(kinds)]
        body = json.dumps(items[rnd.randrange(len(items))]).encode()
        head = b"POST /answer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        with socket.create_connection(("127.0.0.1", port)) as s:
            if kind == "mid_head":
                s.sendall(head)
            elif kind == "mid_upload":
                s.sendall(head + f"content-length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
            elif kind == "queued":
                s.sendall(head + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            elif kind == "during_413_drain":
                s.sendall(head + b"content-length: 99999999\r\n\r\n" + b"x" * 100_000)
            time.sleep(rnd.uniform(0.0, 0.05))
        done[kind] += 1
    time.sleep(2.0)  # the server notices the last ones
    after = metric_by(httpx.get(base + "/metrics").text, "qa_requests_total", "outcome", endpoint="/answer")
    delta = Counter(after)
    delta.subtract(before)
    return {
        "disconnects": dict(done),
        # /answer's outcomes; a "queued" client may have had its 200 before it left, on a fast model
        "answer_outcomes_counted": {k: int(v) for k, v in sorted(delta.items()) if v},
        "count_500": int(delta.get("500", 0)),
    }


def plot_rss(result: dict[str, Any], path: Path, command: str) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 - an optional package, only for --plot

    rss = list(result["rss_mb_every_100"])
    x = [100 * i for i in range(len(rss))]
    fig = Figure(figsize=(7, 3.2), dpi=110)
    ax = fig.subplots()
    ax.plot(x, rss, marker="o", markersize=3, label="server RSS")
    ax.axhline(float(result["rss_mb_after_warmup"]), color="grey", linestyle="--", linewidth=1, label="after warmup")
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
    ap.add_argument("experiment", nargs="?", choices=EXPERIMENTS)
    ap.add_argument("--mode", choices=EXPERIMENTS, default=None, help="the experiment, as a flag instead")
    ap.add_argument("--model-dir", default=None, help="bundle to serve (default: the shipped models/default)")
    ap.add_argument(
        "--clients",
        type=int,
        default=None,
        help="overload: concurrent clients (64); headers (16); starvation: clients looping one-window questions "
        "(8); mixed (50); admission: concurrent requests in each burst (32)",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="overload: duration (30); mixed (60); slow: (both timeouts passed, plus 5 s)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="starvation: 5-window requests, one after another (10); admission: burst-then-batch rounds (5)",
    )
    ap.add_argument("--windows", type=int, default=101, help="admission: windows the big /batch_answer needs")
    ap.add_argument("--idle", type=float, default=0.5, help="admission: seconds idle between burst and batch")
    ap.add_argument("--requests", type=int, default=2000, help="soak: requests")
    ap.add_argument("--concurrency", type=int, default=4, help="soak: concurrent clients")
    ap.add_argument("--warmup", type=int, default=200, help="soak: requests before the RSS baseline")
    ap.add_argument("--plot", type=Path, default=None, help="soak: also draw RSS over requests into this PNG")
    ap.add_argument("--header-mib", type=float, default=1.0, help="headers: MiB of header per client")
    ap.add_argument("--connections", type=int, default=250, help="slow: slow connections (half header, half body)")
    ap.add_argument("--byte-every", type=float, default=1.0, help="slow: seconds between a slow client's bytes")
    ap.add_argument(
        "--header-timeout", type=float, default=None, help="slow: QA_HEADER_TIMEOUT_S (default: its default)"
    )
    ap.add_argument("--body-timeout", type=float, default=None, help="slow: QA_BODY_TIMEOUT_S (default: its default)")
    ap.add_argument("--disconnects", type=int, default=100, help="disconnects: connections that go away")
    args = ap.parse_args()
    if args.mode and args.experiment and args.mode != args.experiment:
        ap.error(f"two experiments named: {args.experiment} and --mode {args.mode}")
    experiment = args.mode or args.experiment
    if experiment is None:
        ap.error(f"name an experiment: one of {', '.join(EXPERIMENTS)}")
    clients = args.clients or DEFAULT_CLIENTS.get(experiment, 0)
    seconds = args.seconds or DEFAULT_SECONDS.get(experiment, 0.0)
    repeats = args.repeats or DEFAULT_REPEATS.get(experiment, 0)
    model_dir = Path(args.model_dir or DEFAULT_MODEL_DIR)  # where the windows a request needs are counted
    result: dict[str, Any]
    if experiment == "hol":
        with server({}, args.model_dir) as (_, base):
            result = asyncio.run(hol(base))
    elif experiment == "overload":
        env = {"QA_MAX_QUEUE_WINDOWS": "16", "QA_MAX_WINDOWS_PER_REQUEST": "16", "QA_REQUEST_TIMEOUT_S": "2"}
        with server(env, args.model_dir) as (_, base):
            result = asyncio.run(overload(base, clients, seconds))
    elif experiment == "starvation":
        with server({}, args.model_dir) as (_, base):
            result = asyncio.run(starvation(base, model_dir, clients, repeats))
    elif experiment == "mixed":
        with server({}, args.model_dir) as (_, base):
            result = asyncio.run(mixed(base, model_dir, clients, seconds))
    elif experiment == "admission":
        with server({}, args.model_dir) as (_, base):
            result = asyncio.run(admission(base, model_dir, clients, repeats, args.windows, args.idle))
    elif experiment == "soak":
        with server({}, args.model_dir) as (proc, base):
            result = asyncio.run(soak(base, proc.pid, args.requests, args.concurrency, args.warmup))
    elif experiment == "headers":
        with server({}, args.model_dir) as (proc, base):
            result = header_flood(base, proc.pid, clients, args.header_mib)
    elif experiment == "slow":
        env = {}
        if args.header_timeout is not None:
            env["QA_HEADER_TIMEOUT_S"] = str(args.header_timeout)
        if args.body_timeout is not None:
            env["QA_BODY_TIMEOUT_S"] = str(args.body_timeout)
        limits = Settings(**{k.removeprefix("QA_").lower(): v for k, v in env.items()})
        # until both timeouts have passed, plus the protocol's body backstop and some slack
        seconds = args.seconds or max(limits.header_timeout_s, limits.body_timeout_s) + 5
        with server(env, args.model_dir) as (proc, base):
            result = slow_clients(base, proc.pid, args.connections, seconds, args.byte_every)
        result = {"header_timeout_s": limits.header_timeout_s, "body_timeout_s": limits.body_timeout_s, **result}
    else:
        with server({}, args.model_dir) as (_, base):
            result = disconnect_storm(base, args.disconnects)
    command = " ".join(["python", *sys.argv])
    if experiment == "soak" and args.plot is not None:
        plot_rss(result, args.plot, command)
    print(json.dumps({"experiment": experiment, "command": command, **result}, ensure_ascii=False))


if __name__ == "__main__":
    main()
