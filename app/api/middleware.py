"""ASGI middleware: request ids, the request body (limit, media type, read timeout), request metrics, HEAD, and
JSON for the plain-text errors of the libraries below the app."""

from __future__ import annotations

import asyncio
import email.message
import http
import re
import time
import uuid
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body, kind
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
    body_bytes = error_body(code, message, request_id)
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


def is_json(content_type: bytes | None) -> bool:
    """application/json or application/<anything>+json, with any parameters (charset)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class BodyLimitMiddleware:
    """The request body before the app sees it: 415 for a body that is not plain JSON (by Content-Type on the
    JSON routes, by any Content-Encoding), 413 over `max_bytes` (by Content-Length up front, or by counting a
    chunked body), 408 when it does not arrive within `timeout_s`, 400 for JSON nested too deep."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = 30.0,
        json_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None

        async def refuse(status: int, code: str, message: str) -> None:
            # read and drop (a bounded amount of) the body first: a client still sending when the server closes
            # sees a connection reset instead of this answer
            if await self._discard(receive, min(declared or DISCARD_LIMIT, DISCARD_LIMIT)):
                for m in _error(status, code, message, rid):
                    await send(m)

        has_body = scope["method"] not in ("GET", "HEAD", "OPTIONS", "DELETE")
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if has_body and encoding not in (b"", b"identity"):
            await refuse(
                *kind("unsupported_encoding"),
                "Content-Encoding is not supported: send the body uncompressed (Content-Encoding: identity)",
            )
            return
        if scope["method"] == "POST" and scope.get("path") in self.json_paths:
            content_type = headers.get(b"content-type")
            if not is_json(content_type):
                got = f"Content-Type {content_type.decode('latin-1')[:60]!r}" if content_type else "no Content-Type"
                await refuse(*kind("unsupported_media_type"), f"{got}: send Content-Type: application/json")
                return
        if declared is not None and declared > self.max_bytes:
            await refuse(413, "body_too_large", f"request body exceeds {self.max_bytes} bytes (QA_MAX_BODY_BYTES)")
            return

        # Buffer the body (it is small by construction) so the limit is enforced before the app runs;
        # raising from inside the app would surface as a 500 from Starlette's error middleware.
        chunks: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return  # client disconnected while sending: MetricsMiddleware counts a 499
                    chunk = msg.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_bytes:
                        message = f"request body exceeds {self.max_bytes} bytes (QA_MAX_BODY_BYTES)"
                        for m in _error(413, "body_too_large", message, rid):
                            await send(m)
                        return
                    chunks.append(chunk)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            # the client is still connected (else receive() had said so), so it can read this; Connection: close
            message = f"request body not received within {self.timeout_s:g}s (QA_BODY_TIMEOUT_S)"
            for m in _error(*kind("request_timeout"), message, rid):
                await send(m)
            return
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

    async def _discard(self, receive: Receive, limit: int) -> bool:
        """Read and drop up to `limit` bytes of body; False if the client went away meanwhile."""
        seen = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while seen < limit:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return False
                    seen += len(msg.get("body", b""))
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            pass  # answer anyway; the connection closes after it
        return True


class MetricsMiddleware:
    """Count and time every request by route and outcome (status), with bounded label values.

    A client that went away before its response started is a 499 at whatever stage it left (during the upload,
    in the queue, while its answer ran): it never saw a status, and no 5xx may be counted that no client got.
    """

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
        status: int | None = None
        gone = False  # the client disconnected before a response started
        t0 = time.perf_counter()

        async def watch(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start" and status is None:
                status = msg["status"]
            await send(msg)

        async def watched_receive() -> Message:
            nonlocal gone
            msg = await receive()
            if msg["type"] == "http.disconnect" and status is None:
                gone = True
            return msg

        try:
            await self.app(scope, watched_receive, watch)
        finally:
            # no status and no disconnect: the app raised (or returned without answering), which uvicorn turns
            # into a 500
            outcome = 499 if gone else (status or 500)
            self.metrics.requests.labels(endpoint, str(outcome)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - t0)


class HeadMiddleware:
    """HEAD is GET without the body, on every GET route (FastAPI routes GET only, so HEAD /livez was a 405)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(msg: Message) -> None:
            if msg["type"] == "http.response.body":
                msg = {**msg, "body": b""}  # the headers (Content-Length included) stay those of the GET
            await send(msg)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# Plain-text errors of the libraries below the app, by status: Starlette's CORS preflight refusal and its
# static files' Range errors. Each status here is a code of the error table.
LIBRARY_ERRORS = {400: "bad_request", 416: "range_not_satisfiable"}


class JSONErrorsMiddleware:
    """A plain-text error response from a library (CORS preflight, static files) gets the service's JSON error
    body, so that every error a client can see has the one shape; the status and other headers stay."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        text = b""

        async def send_json(msg: Message) -> None:
            nonlocal held, text
            if msg["type"] == "http.response.start":
                content_type = dict(msg.get("headers", [])).get(b"content-type", b"")
                if msg["status"] >= 400 and content_type.startswith(b"text/plain"):
                    held = msg
                    return
            elif held is not None and msg["type"] == "http.response.body":
                text += msg.get("body", b"")
                if msg.get("more_body", False):
                    return
                await self._send(send, held, text.decode("utf-8", "replace"), scope)
                return
            await send(msg)

        await self.app(scope, receive, send_json)

    @staticmethod
    async def _send(send: Send, start: Message, text: str, scope: Scope) -> None:
        status = start["status"]
        code = LIBRARY_ERRORS.get(status, f"http_{status}")
        message = text.strip() or http.HTTPStatus(status).phrase
        rid = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        body = error_body(code, message[:200], rid)
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
