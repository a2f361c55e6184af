"""ASGI middleware: request ids, the request body limit (FastAPI and uvicorn have none), request metrics."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.schemas import ErrorBody, ErrorResponse
from app.metrics import Metrics

# A client's X-Request-ID is used only when it is this safe: it ends up in logs and in error bodies.
SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
# Our bodies nest 3 deep; json.loads recurses per level, so cap it far below the interpreter's limit.
MAX_JSON_DEPTH = 32
# After a 413 by Content-Length, read and drop this much before answering: a client still sending when
# the server closes sees a connection reset instead of the 413 (Python's http.client and requests do).
DISCARD_LIMIT = 16 << 20
_JSON_TOKENS = re.compile(rb'[\[\]{}"\\]')


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON nesting goes deeper than `limit`, skipping brackets inside strings; no parse needed."""
    depth = 0
    in_string = False
    escaped_at = -2  # position of the last backslash that escapes the next character
    for m in _JSON_TOKENS.finditer(body):
        c = m.group()
        if in_string:
            if m.start() == escaped_at + 1:
                continue  # this character is escaped
            if c == b"\\":
                escaped_at = m.start()
            elif c == b'"':
                in_string = False
            continue
        if c == b'"':
            in_string = True
        elif c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def _error(status: int, code: str, message: str, request_id: str) -> tuple[Message, Message]:
    # same body shape as every other error (app/api/errors.py), rendered before FastAPI sees the request
    body = ErrorResponse(error=ErrorBody(code=code, message=message, request_id=request_id or None)).model_dump_json()
    body_bytes = body.encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body_bytes)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body_bytes}


class RequestIdMiddleware:
    """Echo a safe X-Request-ID (or make one) so a client's id shows up in logs and error bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"")
        rid = given.decode() if SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        # downstream (error bodies, logs) reads the id from the headers: replace whatever the client sent
        others = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"x-request-id"]
        scope = {**scope, "headers": [*others, (b"x-request-id", rid.encode())]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*hdrs, (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: by Content-Length up front, or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")

        async def reject() -> None:
            message = f"request body exceeds {self.max_bytes} bytes (QA_MAX_BODY_BYTES)"
            for m in _error(413, "body_too_large", message, rid):
                await send(m)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._discard(receive, min(int(length), DISCARD_LIMIT))
            await reject()
            return

        # Buffer the body (it is small by construction) so the limit is enforced before the app runs;
        # raising from inside the app would surface as a 500 from Starlette's error middleware.
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return  # client disconnected while sending
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await reject()
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, MAX_JSON_DEPTH):
            for m in _error(400, "invalid_json", f"JSON nests deeper than {MAX_JSON_DEPTH} levels", rid):
                await send(m)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _discard(receive: Receive, limit: int) -> None:
        seen = 0
        while seen < limit:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return


class MetricsMiddleware:
    """Count and time every request by route and outcome (status), with bounded label values."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.paths else "other"
        status = 500
        t0 = time.perf_counter()

        async def capture(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)
