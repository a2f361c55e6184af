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
)

log = logging.getLogger(__name__)

# Error bodies never echo unbounded user input: a field name or reason is cut to this many characters.
MAX_ECHO_CHARS = 120
MAX_FIELDS = 20


class Unauthorized(Exception):
    """No bearer token, or not one of the configured keys."""


# kind -> (status, code). Client faults are 4xx; only a failed batch is a 5xx, and it fails alone.
# 499 (nginx's "client closed request") is never seen by the client; it keeps disconnects out of the 5xx counts.
ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    Unauthorized: (401, "unauthorized"),
    RequestValidationError: (422, "invalid_request"),
    InvalidInput: (422, "invalid_input"),
    InputTooLarge: (422, "input_too_large"),
    Overloaded: (429, "overloaded"),
    ClientDisconnected: (499, "client_closed_request"),
    InferenceFailed: (500, "inference_failed"),
    NotReady: (503, "not_ready"),
    ShuttingDown: (503, "shutting_down"),
    DeadlineExceeded: (504, "deadline_exceeded"),
}


def status_for(exc: Exception) -> tuple[int, str]:
    for kind in type(exc).__mro__:
        if kind in ERROR_TABLE:
            return ERROR_TABLE[kind]
    return 500, "internal_error"


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


async def _engine(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    status, code = status_for(exc)
    fields = [ErrorField(field=_loc(exc.field), reason=exc.message)] if exc.field else []
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
    return error_response(request, exc.status_code, f"http_{exc.status_code}", str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(request, 500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(EngineError, _engine)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
