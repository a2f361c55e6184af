"""A real uvicorn process with the shipped model under shutdown, disconnects and oversized bodies.

The shipped model is slow enough on a CPU (tens of milliseconds a window) that requests are really
in flight when the signal or the disconnect arrives.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
import urllib.request

import pytest

from app.settings import DEFAULT_MODEL_DIR
from bench.load import joined_paragraphs
from tests.integration.test_uvicorn import call, free_port, start, wait_ready
from tests.support.tiny_model import KORQUAD_DEV

pytestmark = pytest.mark.slow


def post_many(base: str, items: list[dict]) -> tuple[list[tuple[int, dict, str]], list[threading.Thread]]:
    results: list[tuple[int, dict, str]] = []

    def one(i: int, item: dict) -> None:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
        conn.request("POST", "/answer", json.dumps(item), {"content-type": "application/json", "x-request-id": f"r{i}"})
        r = conn.getresponse()
        body = r.read()
        results.append((r.status, json.loads(body), r.getheader("x-request-id") or ""))

    threads = [threading.Thread(target=one, args=(i, item)) for i, item in enumerate(items)]
    for t in threads:
        t.start()
    return results, threads


def sigterm_under_load(env: dict[str, str], items: list[dict]) -> tuple[list[tuple[int, dict, str]], int, int, str]:
    """Serve the shipped model, send `items` at once, SIGTERM half a second later; (results, in flight, rc, log)."""
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(DEFAULT_MODEL_DIR), "QA_PORT": str(port), **env})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        results, threads = post_many(base, items)
        time.sleep(0.5)
        in_flight = len(items) - len(results)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
    finally:
        out = proc.communicate(timeout=60)[0].decode()
    return results, in_flight, proc.returncode, out


def test_sigterm_drains_in_flight_requests_and_exits_0():
    results, in_flight, returncode, out = sigterm_under_load({}, joined_paragraphs(KORQUAD_DEV, 20))
    assert in_flight >= 5, "the test must signal while requests are in flight"
    assert sorted(status for status, _, _ in results) == [200] * 20, out
    assert returncode == 0, out
    assert "draining" in out and "Traceback" not in out


def test_what_the_drain_window_cannot_finish_gets_json_503():
    items = joined_paragraphs(KORQUAD_DEV, 20, 3)
    results, _, returncode, out = sigterm_under_load({"QA_GRACEFUL_TIMEOUT_S": "2"}, items)
    statuses = [status for status, _, _ in results]
    # admission control may refuse some at once (429); none may end as a 500 or a reset
    assert len(statuses) == 20 and set(statuses) <= {200, 429, 503}, statuses
    assert 503 in statuses, "20 three-paragraph requests cannot all finish in a 1 s drain window"
    for status, body, rid in results:
        if status == 503:
            assert body["error"]["code"] == "shutting_down" and body["error"]["request_id"] == rid
    assert returncode == 0, out
    assert "Traceback" not in out


def test_client_disconnects_are_499_without_tracebacks_and_oversized_bodies_are_readable_413s():
    """Gone while queued or during the upload: each a 499 in /metrics, and no 500 that no client ever got."""
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(DEFAULT_MODEL_DIR), "QA_PORT": str(port), "QA_MAX_BODY_BYTES": "100000"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        [item] = joined_paragraphs(KORQUAD_DEV, 1, 6)
        body = json.dumps(item).encode()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(
                    b"POST /answer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                time.sleep(0.2)  # tokenized and queued, not yet answered
        for _ in range(3):  # gone during the upload: Content-Length promises more than is ever sent
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(
                    b"POST /answer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body[: len(body) // 2]
                )
                time.sleep(0.05)
        # a 413 that a plain http.client sees, although it sends the whole body first
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/answer", b"x" * 3_000_000, {"content-type": "application/json"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"]["code"] == "body_too_large"
        deadline = time.monotonic() + 30
        while True:
            metrics = urllib_get(base + "/metrics")
            if 'qa_requests_total{endpoint="/answer",outcome="499"} 8.0' in metrics:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert call(base + "/livez")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert 'outcome="500"' not in metrics
    assert "Traceback" not in out and "Exception in ASGI application" not in out, out
    assert "client disconnected" in out


def urllib_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()
