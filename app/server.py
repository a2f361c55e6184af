"""uvicorn as this service runs it: its httptools protocol with header limits, read timeouts and JSON errors; a
server that drains on SIGTERM; and a socket bound before the model loads."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import clip, error_body, kind
from app.engine.interface import Engine
from app.settings import Settings

log = logging.getLogger("app.server")

# After an answer the server sends before the request is read (431, 400, 408), it closes its side and drops
# what the client still sends for this long: closing at once turns the client's next bytes into a reset,
# which can destroy the answer before the client reads it (nginx's lingering close).
LINGER_S = 2.0
# The protocol's own body timer fires this long after QA_BODY_TIMEOUT_S: the body middleware answers the
# 408 first; this only closes connections whose body nobody reads (a 405 or 404 with a body still coming).
BODY_TIMER_GRACE_S = 2.0
# Refusals at the HTTP layer are logged as a tally at most this often, so a flood cannot flood the log.
TALLY_EVERY_S = 10.0


class _Tally:
    """Counts refusals at the HTTP layer and logs them at most every TALLY_EVERY_S."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.logged_at = -math.inf

    def note(self, what: str) -> None:
        self.counts[what] += 1
        now = time.monotonic()
        if now - self.logged_at >= TALLY_EVERY_S:
            log.warning("refused at the HTTP layer: %s", ", ".join(f"{n} x {w}" for w, n in self.counts.items()))
            self.counts.clear()
            self.logged_at = now


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """uvicorn's limit_concurrency answer, as a JSON 503 like every other error."""
    body = error_body("over_capacity", "too many open connections (QA_MAX_CONNECTIONS); retry shortly")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": kind("over_capacity")[0], "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (kept for its speed), plus what it lacks: a limit on the request line and
    headers (431), a timeout for them and a backstop for the body (408), and JSON for its own 400 and 503.

    httptools keeps a header in memory until it ends, however long: a 128 MB header was read to the end (20 s,
    and /livez slowed to 9 s). Here the bytes of a request head are counted before the parser sees them.
    Subclassed per server by `protocol_for`, which sets the limits below from the settings.
    """

    max_head_bytes = 16384
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    tally = _Tally()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # checked in on_headers_complete instead, to answer with JSON (uvicorn's own answer is plain text)
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self.in_head = True  # between requests, or inside a request line and headers
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.refused = False  # answered and closing: what else arrives is dropped

    # --- connection ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a new connection must send its first request head in time (an idle kept-alive one waits keep_alive_s)
        self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timers()
        super().connection_lost(exc)

    def cancel_timers(self) -> None:
        for timer in (self.head_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = None

    def data_received(self, data: bytes) -> None:
        while data and not self.refused and self.parser is not None:
            if not self.in_head:
                # body bytes go straight on (a pipelined head later in this read is not counted: at most one read)
                self.feed(data)
                return
            if self.head_timer is None:
                # the first byte of a later request on a kept-alive connection
                self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_timed_out)
            room = self.max_head_bytes - self.head_bytes
            if room <= 0:
                self.refuse(
                    *kind("headers_too_large"),
                    f"request line and headers exceed {self.max_head_bytes} bytes (QA_MAX_HEADER_BYTES)",
                )
                return
            piece, data = data[:room], data[room:]
            self.head_bytes += len(piece)
            self.feed(piece)

    def feed(self, data: bytes) -> None:
        """uvicorn's data_received, with the parser's reason in a JSON 400."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.refuse(*kind("invalid_http"), f"invalid HTTP request: {clip(str(e) or type(e).__name__)}")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # --- parser callbacks ---
    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.body_timer = self.loop.call_later(self.body_timeout_s + BODY_TIMER_GRACE_S, self.body_timed_out)
        limit = self.max_connections
        # this connection is one of self.connections; the new request is not in self.tasks yet
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self.tally.note("503 over_capacity")
            app, self.app = self.app, over_capacity
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self.in_head = True
        self.head_bytes = 0

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's says to install a WebSocket library; this service has no WebSocket routes (ws="none")
        self.tally.note("upgrade request ignored")

    # --- refusals ---
    def send_400_response(self, msg: str) -> None:
        self.refuse(*kind("invalid_http"), f"invalid HTTP request: {msg}")

    def responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def refuse(self, status: int, code: str, message: str) -> None:
        """Answer with a JSON error before the request reached the app, and close (lingering)."""
        self.refused = True
        self.tally.note(f"{status} {code}")
        self.cancel_timers()
        if self.transport.is_closing():
            return
        if self.responding():
            # a pipelined request's answer is still being written: ours cannot go in between
            self.transport.close()
            return
        body = error_body(code, message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then EOF; we drop what it still sends
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.responding():
            # the previous request is still being answered: a pipelined head may wait for it
            self.head_timer = self.loop.call_later(self.header_timeout_s, self.head_timed_out)
        elif self.head_bytes == 0:
            self.transport.close()  # a connection that never sent a byte: nothing to answer
        else:
            self.refuse(
                *kind("request_timeout"),
                f"request line and headers not received within {self.header_timeout_s:g}s (QA_HEADER_TIMEOUT_S)",
            )

    def body_timed_out(self) -> None:
        self.body_timer = None
        if not self.transport.is_closing():
            self.tally.note("body timeout (closed)")
            self.transport.close()


def protocol_for(settings: Settings) -> type[GuardedProtocol]:
    """GuardedProtocol with these settings' limits (uvicorn builds protocols from a class and its Config)."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "tally": _Tally(),
        },
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the engine's drain, and a drained shutdown exits 0."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for sock in sockets or []:
            host, port = sock.getsockname()[:2]
            log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(self.engine.begin_drain)
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the signal after shutdown (exit 143); a completed drain is a clean exit
                self._captured_signals.clear()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port but not listening yet: a busy port fails now, before the model loads, and
    no connection is accepted (they are refused) until the server listens on it, ready. Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def build_server(app: ASGIApp, settings: Settings, engine: Engine) -> DrainingServer:
    """The uvicorn server for `app`: serve it with `server.run(sockets=[bind(...)])`."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # explicit: httptools (about 0.7 ms a request faster than h11 here) under GuardedProtocol's limits
        http=protocol_for(settings),
        ws="none",
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        timeout_keep_alive=math.ceil(settings.keep_alive_s),
        limit_concurrency=settings.max_connections,
        proxy_headers=settings.proxy_headers,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    return DrainingServer(config, engine)
