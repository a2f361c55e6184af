"""The one table from error kinds to HTTP statuses, and the handlers that render it."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.api.schemas import ErrorBody, ErrorField, ErrorResponse
from app.engine.errors import (
    DeadlineExceeded,
    EngineError,
    InferenceFailed,
    InputTooLarge,
    InvalidInput,
    NotReady,
    Overloaded,
)

log = logging.getLogger(__name__)

# kind -> (status, code). Client faults are 4xx; only a failed batch is a 5xx, and it fails alone.
ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    RequestValidationError: (422, "invalid_request"),
    InvalidInput: (422, "invalid_input"),
    InputTooLarge: (422, "input_too_large"),
    Overloaded: (429, "overloaded"),
    InferenceFailed: (500, "inference_failed"),
    NotReady: (503, "not_ready"),
    DeadlineExceeded: (504, "deadline_exceeded"),
}


def status_for(exc: Exception) -> tuple[int, str]:
    for kind in type(exc).__mro__:
        if kind in ERROR_TABLE:
            return ERROR_TABLE[kind]
    return 500, "internal_error"


def error_response(
    request: Request, status: int, code: str, message: str, fields: list[ErrorField] | None = None
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorBody(code=code, message=message, fields=fields or [], request_id=request.headers.get("x-request-id"))
    )
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _loc(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 400, "invalid_json", "request body is not valid JSON")
    fields = [
        ErrorField(field=_loc(tuple(e.get("loc", ()))), reason=str(e.get("msg", "")).removeprefix("Value error, "))
        for e in errors
    ]
    message = "; ".join(f"{f.field}: {f.reason}" for f in fields[:5])
    status, code = ERROR_TABLE[RequestValidationError]
    return error_response(request, status, code, message, fields)


async def _engine(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    status, code = status_for(exc)
    fields = [ErrorField(field=_loc(exc.field), reason=exc.message)] if exc.field else []
    return error_response(request, status, code, exc.message, fields)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(request, exc.status_code, f"http_{exc.status_code}", str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(request, 500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(EngineError, _engine)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
