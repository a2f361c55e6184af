"""The one table from error kinds to HTTP statuses, and the handlers that render it."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api.schemas import ErrorBody, ErrorField, ErrorResponse
from app.engine.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    EngineError,
    InferenceFailed,
    InputTooLarge,
    InvalidInput,
    NotReady,
    Overloaded,
    ShuttingDown,
    Where,
)

log = logging.getLogger(__name__)

# Error bodies never echo unbounded user input: a field name or reason is cut to this many characters.
MAX_ECHO_CHARS = 120
MAX_FIELDS = 20


class Unauthorized(Exception):
    """No bearer token, or not one of the configured keys."""


# Every status the service answers, with its `code` and what it means: the one table of error codes. docs/api.md's
# "Errors" section is written from it, and tests/api/test_error_table.py checks that the two agree. 499 is never
# sent: it is the outcome /metrics counts when the client went away first (nginx's "client closed request").
ERROR_CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "the body is not JSON, not valid UTF-8, or nests deeper than 32 levels"),
    "invalid_http": (400, "not a valid HTTP/1.1 request (answered by the server before the app sees it)"),
    "bad_request": (
        400,
        "refused by the HTTP layer: a CORS preflight from an origin, method or header not allowed, or a malformed "
        "Range header on a static file",
    ),
    "unauthorized": (
        401,
        "a bearer token is configured and the request has none or a wrong one (`WWW-Authenticate: Bearer`)",
    ),
    "http_404": (404, "no such endpoint; the message lists the endpoints"),
    "http_405": (405, "the endpoint exists but not for this method; `Allow` lists the methods (QA routes: POST JSON)"),
    "request_timeout": (
        408,
        "the request line and headers did not arrive within `QA_HEADER_TIMEOUT_S`, or the body within "
        "`QA_BODY_TIMEOUT_S`; the connection closes",
    ),
    "body_too_large": (
        413,
        "the body is over `QA_MAX_BODY_BYTES` (the body is read and dropped first, so plain clients see the 413)",
    ),
    "unsupported_media_type": (
        415,
        "a POST to a QA route without `Content-Type: application/json` (text/plain, a form, or none)",
    ),
    "unsupported_encoding": (415, "a `Content-Encoding` other than identity (compressed bodies are not accepted)"),
    "range_not_satisfiable": (416, "a Range header beyond the end of a static file (the demo page's assets)"),
    "invalid_request": (422, "a field is missing, of the wrong type, out of range, blank, or has a lone surrogate"),
    "invalid_input": (422, "a text tokenizes to nothing (only characters the tokenizer drops)"),
    "input_too_large": (
        422,
        "a context or passage needs more than `QA_MAX_WINDOWS_PER_REQUEST` windows, a body's windows could never "
        "fit `QA_MAX_QUEUE_WINDOWS`, or it could never finish before its deadline even on an idle server",
    ),
    "overloaded": (
        429,
        "the work queued ahead leaves no time to finish before the deadline, or the queue is full; `Retry-After` "
        "is the estimated time until the queue drains",
    ),
    "headers_too_large": (
        431,
        "the request line and headers are over `QA_MAX_HEADER_BYTES`; answered before they are read further, "
        "and the connection closes",
    ),
    "client_closed_request": (
        499,
        "the client went away (during the upload, in the queue or while its answer ran); never sent, but counted "
        "under its own outcome in /metrics instead of as a 500",
    ),
    "inference_failed": (500, "the engine batch holding this request failed; other batches are unaffected"),
    "internal_error": (500, "a bug; the server log has the traceback"),
    "not_ready": (503, "the model is not loaded, or inference stalled (`Retry-After: 1`)"),
    "shutting_down": (
        503,
        "the server is draining after SIGTERM and could not finish this request in its drain window",
    ),
    "over_capacity": (
        503,
        "`QA_MAX_CONNECTIONS` connections or requests are already open; the connection closes (`Retry-After: 1`)",
    ),
    "deadline_exceeded": (504, "the request could not finish within `QA_REQUEST_TIMEOUT_S`"),
}


def kind(code: str) -> tuple[int, str]:
    """(status, code) of a code in ERROR_CODES; a code missing from the table fails where it is used."""
    return ERROR_CODES[code][0], code


# kind -> (status, code). Client faults are 4xx; only a failed batch is a 5xx, and it fails alone.
ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    Unauthorized: kind("unauthorized"),
    RequestValidationError: kind("invalid_request"),
    InvalidInput: kind("invalid_input"),
    InputTooLarge: kind("input_too_large"),
    Overloaded: kind("overloaded"),
    ClientDisconnected: kind("client_closed_request"),
    InferenceFailed: kind("inference_failed"),
    NotReady: kind("not_ready"),
    ShuttingDown: kind("shutting_down"),
    DeadlineExceeded: kind("deadline_exceeded"),
}


def status_for(exc: Exception) -> tuple[int, str]:
    for kind in type(exc).__mro__:
        if kind in ERROR_TABLE:
            return ERROR_TABLE[kind]
    return 500, "internal_error"


def error_body(code: str, message: str, request_id: str | None = None) -> bytes:
    """The JSON error body, for the layers below FastAPI (ASGI middleware, the HTTP protocol)."""
    body = ErrorResponse(error=ErrorBody(code=code, message=message, request_id=request_id or None))
    return body.model_dump_json().encode()


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    fields: list[ErrorField] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(code=code, message=message, fields=fields or [], request_id=request.headers.get("x-request-id"))
    )
    headers = dict(headers or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", "1")
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def _loc(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return clip(".".join(parts) or "body")


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 400, "invalid_json", "request body is not valid JSON")
    fields = [
        ErrorField(
            field=_loc(tuple(e.get("loc", ()))), reason=clip(str(e.get("msg", "")).removeprefix("Value error, "))
        )
        for e in errors[:MAX_FIELDS]
    ]
    message = "; ".join(f"{f.field}: {f.reason}" for f in fields[:5])
    status, code = ERROR_TABLE[RequestValidationError]
    return error_response(request, status, code, message, fields)


def field_path(endpoint: str, where: Where) -> tuple[str | int, ...]:
    """The JSON path, in this endpoint's body, of the input the engine names."""
    if endpoint == "/read":
        return {
            "question": ("question",),
            "passage": ("passages", where.passage),
            "passages": ("passages",),
            "request": ("passages",),
        }[where.side]
    if endpoint == "/batch_answer":
        item: tuple[str | int, ...] = ("items", where.item)
        return {
            "question": (*item, "question"),
            "passage": (*item, "context"),
            "passages": (*item, "context"),
            "request": ("items",),
        }[where.side]
    return ("question",) if where.side == "question" else ("context",)


async def _engine(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    status, code = status_for(exc)
    where = exc.where
    fields = [ErrorField(field=_loc(field_path(request.url.path, where)), reason=exc.message)] if where else []
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if isinstance(exc, Overloaded) else None
    if isinstance(exc, ClientDisconnected):
        log.info("client disconnected; its remaining windows were dropped")
    return error_response(request, status, code, exc.message, fields, headers)


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    status, code = ERROR_TABLE[Unauthorized]
    return error_response(request, status, code, str(exc))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI raises a bare 400 for bodies json.loads cannot even start on (invalid UTF-8, recursion)
        return error_response(request, 400, "invalid_json", "request body is not valid UTF-8 JSON")
    message = str(exc.detail)
    if exc.status_code == 404:
        listed = getattr(request.app.state, "endpoints", ())
        message = "no such endpoint" + (f"; the endpoints are: {', '.join(listed)}" if listed else "")
    elif exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed here; use {allow}"
        if "POST" in allow:
            message += " with a JSON body (Content-Type: application/json)"
    return error_response(request, exc.status_code, f"http_{exc.status_code}", message, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(request, 500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(EngineError, _engine)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
