"""The errors the client raises: one base, transport failures, and HTTP errors built from the server's JSON shape."""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

# a non-JSON error body (a proxy's HTML page) is quoted in the message only this far
MAX_BODY_ECHO = 200


class QAError(Exception):
    """Base of every error this client raises."""


class QAConnectionError(QAError):
    """No response came back: the connection failed or broke, or an attempt ran past its timeout."""


@dataclass(frozen=True)
class FieldError:
    """One entry of an error's `fields`: which request field was refused, and why."""

    field: str
    reason: str


class QAHTTPError(QAError):
    """The server answered with an error status; `code`, `fields` and `request_id` come from its JSON body."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        fields: tuple[FieldError, ...] = (),
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(status, code, message)

    def __reduce__(self) -> tuple[type[QAHTTPError], tuple[object, ...]]:
        # pickle (multiprocessing, concurrent.futures) would otherwise rebuild it from `args` alone
        return type(self), (self.status, self.code, self.message, self.fields, self.request_id, self.retry_after)

    def __str__(self) -> str:
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code or 'error'}: {self.message}{rid}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r}, "
            f"fields={self.fields!r}, request_id={self.request_id!r}, retry_after={self.retry_after!r})"
        )


class InvalidRequest(QAHTTPError):
    """A 4xx the caller must fix (400 bad JSON, 413 body too large, 422 invalid field...); never retried."""


class Unauthorized(QAHTTPError):
    """401 (or 403): no API key, or not one the server accepts."""


class Overloaded(QAHTTPError):
    """429: the server's queue cannot take the request in time; retried after `Retry-After`."""


class Unavailable(QAHTTPError):
    """503: the model is still loading or the server is shutting down; retried after `Retry-After`."""


class DeadlineExceeded(QAHTTPError):
    """504: the server could not finish the request within its own deadline; not retried."""


_BY_STATUS: dict[int, type[QAHTTPError]] = {
    401: Unauthorized,
    403: Unauthorized,
    429: Overloaded,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_class(status: int) -> type[QAHTTPError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InvalidRequest if 400 <= status < 500 else QAHTTPError


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in seconds: delta-seconds, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return None if math.isnan(seconds) else max(0.0, seconds)


def error_from_response(response: httpx.Response, request_id: str | None) -> QAHTTPError:
    """Build the error from `{"error": {"code", "message", "fields", "request_id"}}`, or from whatever else came."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    rid = response.headers.get("x-request-id") or request_id
    body: Any = None
    try:
        body = response.json()
    except ValueError:  # not JSON (a proxy's HTML page, an empty body), or not UTF-8
        pass
    err = body.get("error") if isinstance(body, dict) else None
    cls = error_class(status)
    if not isinstance(err, dict):
        text = response.text.strip()
        if len(text) > MAX_BODY_ECHO:
            text = text[: MAX_BODY_ECHO - 1] + "…"
        message = text or response.reason_phrase or f"HTTP {status}"
        return cls(status, None, message, (), rid, retry_after)
    fields = tuple(
        FieldError(str(f.get("field", "")), str(f.get("reason", "")))
        for f in err.get("fields") or ()
        if isinstance(f, dict)
    )
    code = err.get("code")
    message = err.get("message") or response.reason_phrase or f"HTTP {status}"
    body_rid = err.get("request_id")
    return cls(
        status,
        str(code) if code is not None else None,
        str(message),
        fields,
        str(body_rid) if body_rid else rid,
        retry_after,
    )
