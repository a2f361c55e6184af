"""What the bench scripts share: KorQuAD test items, a `python -m app` child, closed-loop HTTP clients, latency
summaries, /metrics samples, and a bundle opened the way the service opens it (ServedModel)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.engine.config import ModelConfig
from app.engine.served import ServedModel

REPO = Path(__file__).resolve().parents[1]
# the same file and variable as the tests (tests/support/tiny_model.py)
DATA = Path(os.environ.get("KORQUAD_DEV", REPO.parent / "shared" / "data" / "korquad" / "KorQuAD_v1.0_dev.json"))
TEST_ARTICLES = range(112, 140)  # the held-out test split of KorQuAD v1.0 dev; never trained or tuned on
TEST_SPEC = f"{TEST_ARTICLES.start}:{TEST_ARTICLES.stop}"  # the same, as model_export.data.load_squad reads it

Item = dict[str, str]  # an /answer body: {"question": ..., "context": ...}


# --------------------------------------------------------------------------- KorQuAD data
def squad_articles(path: Path = DATA) -> list[dict[str, Any]]:
    """The `data` list of a SQuAD-format JSON file: one entry per article."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["data"]


def load_items(path: Path = DATA, articles: Sequence[int] = TEST_ARTICLES) -> list[Item]:
    """Every question of these articles with its own paragraph, in file order."""
    data = squad_articles(path)
    return [
        {"question": qa["question"], "context": p["context"]}
        for a in articles
        for p in data[a]["paragraphs"]
        for qa in p["qas"]
    ]


def held_out_items(n: int | None = None, path: Path = DATA) -> list[Item]:
    """The first `n` test questions (all without `n`), each with its own paragraph."""
    return load_items(path)[:n]


def held_out_paragraphs(path: Path = DATA) -> list[dict[str, Any]]:
    """The test articles' paragraphs in order, each with its `context` and `qas`."""
    data = squad_articles(path)
    return [p for a in TEST_ARTICLES for p in data[a]["paragraphs"]]


def join(paragraphs: Sequence[dict[str, Any]]) -> Item:
    """One item over consecutive paragraphs: their contexts joined, the last one's first question."""
    return {"question": paragraphs[-1]["qas"][0]["question"], "context": " ".join(p["context"] for p in paragraphs)}


def joined_paragraphs(path: Path, n: int, per_context: int = 1) -> list[Item]:
    """n test-split items whose context joins `per_context` consecutive paragraphs (the question is the last's)."""
    paragraphs = held_out_paragraphs(path)
    return [join(paragraphs[i : i + per_context]) for i in range(n)]


# --------------------------------------------------------------------------- a bundle, as the service opens it
def open_model(bundle: Path, load: bool = True, **config: Any) -> ServedModel:
    """`bundle` opened by ServedModel, as the service opens it: verified, its variant and runtime picked for this
    machine unless `config` (ModelConfig's fields) says otherwise. With `load` False there is no session: the
    tokenizer and `windows()` only, to count the windows a request needs without running anything."""
    model = ServedModel(ModelConfig(model_dir=Path(bundle), **config))
    if load:
        model.load()
    return model


def windows_needed(model: ServedModel, items: Sequence[Item]) -> list[int]:
    """How many windows the service cuts each item into."""
    return [len(ws) for ws in model.windows([(it["question"], it["context"]) for it in items])]


# --------------------------------------------------------------------------- a server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    env: dict[str, str], model_dir: str | Path | None = None, ready_timeout_s: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `python -m app` child on a free loopback port with `env` on top of ours; yields (process, base URL) once
    /readyz says it can answer, and stops it with SIGTERM after (SIGKILL if it has not exited within 60 s).
    Its stderr goes to a temporary file, whose end is in the error when it exits early or never gets ready."""
    port = free_port()
    full = {**os.environ, "QA_HOST": "127.0.0.1", "QA_PORT": str(port), "QA_LOG_LEVEL": "warning", **env}
    if model_dir:
        full["QA_MODEL_DIR"] = str(model_dir)
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=full, stderr=log)

        def failed(why: str) -> RuntimeError:
            log.seek(0)
            return RuntimeError(f"{why}; its stderr ends:\n{log.read()[-3000:].decode(errors='replace')}")

        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                if proc.poll() is not None:
                    raise failed(f"server exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise failed(f"server not ready after {ready_timeout_s:.0f} s")
                time.sleep(0.2)
            yield proc, base
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- timing
def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (q in 0..1) of `values`, interpolated between the two nearest ranks (numpy's default
    method): q 0.5 is the median, q 1 the maximum."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def quantile_key(q: float) -> str:
    """0.5 -> "p50_ms", 0.99 -> "p99_ms", 1 -> "max_ms"."""
    return "max_ms" if q == 1 else f"p{100 * q:g}_ms"


def latency_ms(seconds: Sequence[float], qs: Sequence[float] = (0.5, 0.99)) -> dict[str, float | None]:
    """{"p50_ms": ..., "p99_ms": ...}: the quantiles of latencies given in seconds, in ms to 0.1 (None if none)."""
    return {quantile_key(q): round(1000 * percentile(seconds, q), 1) if seconds else None for q in qs}


def rate(n: int | float, seconds: float) -> float | None:
    """n per second, to 0.01 (None for no time)."""
    return round(n / seconds, 2) if seconds > 0 else None


# --------------------------------------------------------------------------- /metrics
def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` in a Prometheus text page (a histogram's are `<name>_sum`, `_count`, `_bucket`,
    a counter's `<name>_total`), with its labels."""
    return [
        (s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples if s.name == name
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`. KeyError if there is none: the server
    always prints its unlabelled series, so a missing one is a renamed metric (labelled series appear with their
    first observation: use `metric_by` for those)."""
    found = [v for got, v in metric_samples(text, name) if labels.items() <= got.items()]
    if not found:
        raise KeyError(f"/metrics has no {name} {labels or ''}".rstrip())
    return sum(found)


def metric_by(text: str, name: str, label: str, **labels: str) -> dict[str, float]:
    """The samples called `name` whose labels include `labels`, summed by the value of `label`."""
    out: Counter[str] = Counter()
    for got, v in metric_samples(text, name):
        if label in got and labels.items() <= got.items():
            out[got[label]] += v
    return dict(out)


def histogram(text: str, name: str, **labels: str) -> tuple[float, float]:
    """(sum, count) of a histogram."""
    return metric(text, f"{name}_sum", **labels), metric(text, f"{name}_count", **labels)


# --------------------------------------------------------------------------- closed-loop clients
@dataclass(frozen=True)
class Reply:
    item: int  # the index of the body sent
    status: int  # the HTTP status; 0 when no response came (connection error, client timeout)
    started: float  # time.perf_counter() when it was sent
    seconds: float  # until the whole response was read
    body: dict[str, Any]  # the decoded JSON ({} if not JSON; {"error": exception name} for status 0)

    @property
    def ended(self) -> float:
        return self.started + self.seconds


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any], item: int = -1) -> Reply:
    """POST `body` as JSON and time it; a transport error is a Reply with status 0, not an exception."""
    t0 = time.perf_counter()
    try:
        r = await http.post(path, json=body)
    except httpx.TransportError as e:
        return Reply(item, 0, t0, time.perf_counter() - t0, {"error": type(e).__name__})
    seconds = time.perf_counter() - t0
    try:
        decoded = r.json()
    except ValueError:
        decoded = {}
    return Reply(item, r.status_code, t0, seconds, decoded if isinstance(decoded, dict) else {})


NextItem = Callable[[int], int | None]  # client number -> index of the next body, None: that client stops


def requests_of(n: int, size: int) -> NextItem:
    """n requests in all, shared by the clients, cycling through `size` bodies."""
    counter = iter(range(n))

    def next_item(_client: int) -> int | None:
        i = next(counter, None)
        return None if i is None else i % size

    return next_item


def until(stop: Callable[[], bool], size: int) -> NextItem:
    """Requests cycling through `size` bodies until `stop()` is true."""
    counter = itertools.count()
    return lambda _client: None if stop() else next(counter) % size


async def closed_loop(
    http: httpx.AsyncClient,
    clients: int,
    bodies: Sequence[dict[str, Any]],
    next_item: NextItem,
    pause: Callable[[Reply], float] | None = None,
    path: str = "/answer",
    replies: list[Reply] | None = None,
) -> list[Reply]:
    """`clients` concurrent clients, each sending `bodies[next_item(k)]` and waiting for its answer before the
    next, until next_item says stop. `pause(reply)`: seconds that client waits after a reply (a client that backs
    off; it may also sample something). Replies are appended to `replies` (pass a list to watch them arrive)."""
    out = [] if replies is None else replies

    async def client(k: int) -> None:
        while (i := next_item(k)) is not None:
            reply = await post(http, path, bodies[i], i)
            out.append(reply)
            wait = pause(reply) if pause is not None else 0.0
            if wait > 0:
                await asyncio.sleep(wait)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return out


def statuses(replies: Sequence[Reply]) -> dict[int, int]:
    """How many replies had each status, by status."""
    return dict(sorted(Counter(r.status for r in replies).items()))


def describe(replies: Sequence[Reply], qs: Sequence[float] = (0.5, 0.99)) -> dict[str, Any]:
    """n, status counts and latency quantiles of some replies."""
    return {"n": len(replies), "statuses": statuses(replies), **latency_ms([r.seconds for r in replies], qs)}
