"""The HTTP edges of the real server (uvicorn with the service's protocol, in a thread, on a fake engine): header
limit (431), header and body read timeouts (408), the connection cap (503), JSON for uvicorn's own errors, and
client disconnects at every stage counted as 499, never 500. No timings are asserted: only statuses, bodies,
and which connections are still open once a timeout has passed (with generous slack)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from app.main import create_app
from app.server import DrainingServer, bind, build_server
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

TIMEOUT_S = 0.5  # header and body timeouts of the module's server
SLACK_S = 15.0  # how long a test waits for something that should happen after TIMEOUT_S
OK = {"question": "where is seoul", "context": "it is in seoul"}


@dataclass
class Running:
    server: DrainingServer
    port: int
    engine: FakeEngine

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@contextmanager
def serving(engine: FakeEngine | None = None, **overrides: object) -> Iterator[Running]:
    engine = engine or FakeEngine()
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    values = {
        "host": "127.0.0.1",
        "port": port,
        "header_timeout_s": TIMEOUT_S,
        "body_timeout_s": TIMEOUT_S,
        "graceful_timeout_s": 2,
        "log_level": "warning",
        **overrides,
    }
    settings = Settings(**values)  # type: ignore[arg-type]
    server = build_server(create_app(settings, lambda s, m: engine), settings, engine)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SLACK_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield Running(server, port, engine)
    finally:
        server.should_exit = True
        thread.join(SLACK_S)


@pytest.fixture(scope="module")
def srv() -> Iterator[Running]:
    with serving(FakeEngine(latency_s=0.5)) as running:
        yield running


def read_all(sock: socket.socket, timeout: float = SLACK_S) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out + b"<reset>"
        if not chunk:
            return out
        out += chunk


def parse(raw: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body) if body else {}


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        return read_all(s)


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=SLACK_S) as r:
        return r.status, r.read()


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + SLACK_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def request_head(path: str = "/livez", extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return method + b" " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n" + extra


# --------------------------------------------------------------------------- header limit
def test_an_oversized_head_is_a_json_431_the_client_can_read_after_sending_it_all(srv):
    # 4 MiB of header, all sent before reading: the server drops the rest instead of resetting the connection
    raw = exchange(srv.port, request_head(extra=b"x-big: " + b"a" * (4 << 20) + b"\r\n\r\n"))
    status, headers, body = parse(raw)
    assert status == 431 and headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body["error"]["code"] == "headers_too_large" and "QA_MAX_HEADER_BYTES" in body["error"]["message"]
    assert get(srv.base + "/livez")[0] == 200


def test_sixteen_clients_with_1_mib_heads_all_get_431(srv):
    results: list[int] = []

    def one() -> None:
        raw = exchange(srv.port, request_head(extra=b"x-big: " + b"a" * (1 << 20) + b"\r\n\r\n"))
        results.append(parse(raw)[0])

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SLACK_S)
    assert results == [431] * 16
    assert get(srv.base + "/livez")[0] == 200


def test_a_long_url_counts_too(srv):
    status, _, body = parse(exchange(srv.port, request_head("/livez?" + "q" * 20_000, b"\r\n")))
    assert status == 431 and body["error"]["code"] == "headers_too_large"


def test_the_limit_is_per_request_on_a_kept_alive_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=SLACK_S)
    for i in range(3):  # 3 x 12 KiB of headers on one connection: more than the limit together, each under it
        conn.request("GET", "/livez", headers={"x-pad": "p" * 12_000, "x-i": str(i)})
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.close()


# --------------------------------------------------------------------------- uvicorn's own errors are JSON
@pytest.mark.parametrize(
    "raw",
    [b"GARBAGE\r\n\r\n", b"GET /livez HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", b"GET /livez HTTP/9.9\r\n\r\n"],
    ids=["method", "header", "version"],
)
def test_a_malformed_request_is_a_json_400(srv, raw):
    status, headers, body = parse(exchange(srv.port, raw))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "invalid_http"


# --------------------------------------------------------------------------- read timeouts
def test_slow_heads_get_a_json_408_and_silent_connections_are_closed(srv):
    slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(10)]
    silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(10)]
    for s in slow:
        s.sendall(request_head())  # no blank line: the head never ends
    try:
        for s in slow:
            status, _, body = parse(read_all(s))
            assert status == 408 and body["error"]["code"] == "request_timeout"
            assert "QA_HEADER_TIMEOUT_S" in body["error"]["message"]
            s.close()  # else the server lingers a moment for more bytes before it closes its side
        for s in silent:
            assert read_all(s) == b""  # closed, with nothing to answer
        wait_until(lambda: srv.open_connections() == 0, "connections left open after the header timeout")
    finally:
        for s in slow + silent:
            s.close()


def test_slow_bodies_get_a_json_408_and_are_closed(srv):
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(10)]
    head = request_head(
        "/answer", b"content-type: application/json\r\ncontent-length: 1000\r\nx-request-id: slow-1\r\n\r\n", b"POST"
    )
    try:
        for s in socks:
            s.sendall(head + b'{"question": ')
        for s in socks:
            status, headers, body = parse(read_all(s))
            assert status == 408 and headers["connection"] == "close"
            assert body["error"]["code"] == "request_timeout" and body["error"]["request_id"] == "slow-1"
        wait_until(lambda: srv.open_connections() == 0, "connections left open after the body timeout")
    finally:
        for s in socks:
            s.close()


def test_an_idle_kept_alive_connection_is_not_cut_by_the_header_timeout(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=SLACK_S)
    conn.request("GET", "/livez")
    assert conn.getresponse().read()
    time.sleep(3 * TIMEOUT_S)  # idle between requests: keep_alive_s applies, not the header timeout
    conn.request("GET", "/livez")
    assert conn.getresponse().status == 200
    conn.close()


# --------------------------------------------------------------------------- HEAD
def test_head_on_a_probe_has_headers_and_no_body(srv):
    raw = exchange(srv.port, b"HEAD /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
    assert b"content-length: " in head.lower()


# --------------------------------------------------------------------------- disconnects
def test_disconnects_at_every_stage_are_499_and_never_500(srv):
    before = get(srv.base + "/metrics")[1].decode()
    post = b"content-type: application/json\r\n"
    body = json.dumps(OK).encode()
    for _ in range(3):  # during the upload: Content-Length 100, 13 bytes sent
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(request_head("/answer", post + b"content-length: 100\r\n\r\n", b"POST") + b'{"question": ')
            time.sleep(0.05)
    for _ in range(3):  # after the whole body, while the answer runs (the fake engine takes 0.5 s)
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            length = f"content-length: {len(body)}\r\n\r\n".encode()
            s.sendall(request_head("/answer", post + length, b"POST") + body)
            time.sleep(0.1)
    # while a 413's body is read and dropped
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(request_head("/answer", post + b"content-length: 99999999\r\n\r\n", b"POST") + b"x" * 1000)
        time.sleep(0.05)
    # in the middle of the head: the app never sees it, nothing is counted
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /answer HTTP/1.1\r\nhost: x\r\ncontent-")
    expected = 3 + 3 + 1 + count_499(before)
    wait_until(lambda: count_499(get(srv.base + "/metrics")[1].decode()) == expected, "499s were not counted")
    metrics = get(srv.base + "/metrics")[1].decode()
    assert 'outcome="500"' not in metrics


def count_499(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('qa_requests_total{endpoint="/answer",outcome="499"}'):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- connection cap
def test_beyond_max_connections_a_request_gets_a_json_503_and_the_connection_closes():
    with serving(max_connections=2) as running:
        held = [http.client.HTTPConnection("127.0.0.1", running.port, timeout=SLACK_S) for _ in range(2)]
        for conn in held:  # two kept-alive connections, idle after one request each
            conn.request("GET", "/livez")
            assert conn.getresponse().read()
        status, headers, body = parse(exchange(running.port, request_head(extra=b"\r\n")))
        assert status == 503 and headers["content-type"] == "application/json"
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        assert body["error"]["code"] == "over_capacity" and "QA_MAX_CONNECTIONS" in body["error"]["message"]
        for conn in held:
            conn.close()
        wait_until(lambda: running.open_connections() == 0, "held connections did not close")
        assert get(running.base + "/livez")[0] == 200
