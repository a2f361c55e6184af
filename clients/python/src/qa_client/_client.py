"""QAClient and AsyncQAClient: the service's endpoints as methods, with retries on 429/503 within a deadline."""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from qa_client._errors import QAConnectionError, QAError, error_from_response
from qa_client._models import (
    AnswerItem,
    AnswerResult,
    Health,
    Passage,
    ReadResult,
    item_json,
    options,
    parse_answer_result,
    parse_batch_results,
    parse_health,
    parse_read_result,
    passage_json,
)
from qa_client._retry import RETRY_ERRORS, RETRY_STATUSES, Attempts, RetryPolicy
from qa_client._version import __version__

DEFAULT_BASE_URL = "http://localhost:8000"
# Longer than the server's own request deadline (QA_REQUEST_TIMEOUT_S, 30 s by default), so that a slow
# request ends in the server's 504 with its request id rather than in a client-side timeout.
DEFAULT_TIMEOUT = 60.0
# The server keeps a client's X-Request-ID only when it matches this; otherwise it makes its own, and the id
# in an error would not be the caller's.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

Json = Any


def _request_id(given: str | None) -> str:
    if given is None:
        return uuid.uuid4().hex
    if not SAFE_REQUEST_ID.fullmatch(given):
        raise ValueError("request_id must match [A-Za-z0-9._-]{1,128}; the server replaces any other id")
    return given


def _decode(response: httpx.Response) -> Json:
    try:
        return response.json()
    except ValueError:
        raise QAError(f"unexpected response: {response.status_code} with a body that is not JSON") from None


class _Base:
    """What both clients share: settings, headers, request bodies."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | None,
        deadline: float,
        max_attempts: int,
        max_retry_wait: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = RetryPolicy(deadline=deadline, max_attempts=max_attempts, max_wait=max_retry_wait)
        self._headers = {"User-Agent": f"qa-service-client/{__version__} httpx/{httpx.__version__}", **(headers or {})}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # swapped for fakes in tests: no real sleeps, a clock that only moves when told
        self._clock = time.monotonic
        self._random = random.random

    def _attempts(self) -> Attempts:
        return Attempts(self.retry, self.timeout, self._clock, self._random)

    @staticmethod
    def _answer_body(question: str, context: str, opts: dict[str, Any]) -> dict[str, Any]:
        return {"question": question, "context": context, **options(**opts)}

    @staticmethod
    def _batch_body(items: Sequence[AnswerItem | Mapping[str, Any]]) -> dict[str, Any]:
        return {"items": [item_json(i) for i in items]}

    @staticmethod
    def _read_body(
        question: str, passages: Sequence[str | Passage | Mapping[str, Any]], opts: dict[str, Any]
    ) -> dict[str, Any]:
        if isinstance(passages, str | Passage | Mapping):
            raise TypeError("passages is a list of passages, not one passage")
        return {"question": question, "passages": [passage_json(p) for p in passages], **options(**opts)}

    @staticmethod
    def _probe(response: httpx.Response, request_id: str) -> Health:
        # a probe's 503 is an answer ("not ready yet"), in its own {"status", "detail"} shape
        if response.status_code in (200, 503):
            try:
                return parse_health(response.json(), response.status_code == 200)
            except ValueError:
                pass
        raise error_from_response(response, request_id)

    @staticmethod
    def _models(body: Json) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise QAError("unexpected response: /v1/models has no 'data' list")
        return body


class QAClient(_Base):
    """Synchronous client. Use it as a context manager, or call close().

    >>> with QAClient("http://localhost:8000") as qa:
    ...     print(qa.answer("수도는?", "한국의 수도는 서울이다.").best)
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        deadline: float = 30.0,
        max_attempts: int = 5,
        max_retry_wait: float = 10.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, deadline, max_attempts, max_retry_wait, headers)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, transport=transport)
        self._sleep = time.sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Json = None, request_id: str | None = None) -> Json:
        rid = _request_id(request_id)
        attempts = self._attempts()
        while True:
            try:
                response = self._http.request(
                    method, path, json=body, headers={"X-Request-ID": rid}, timeout=attempts.next_timeout()
                )
            except RETRY_ERRORS as e:
                wait = attempts.wait(None)
                if wait is None:
                    raise QAConnectionError(f"{method} {path}: {type(e).__name__}: {e}") from e
            except httpx.TransportError as e:
                raise QAConnectionError(f"{method} {path}: {type(e).__name__}: {e}") from e
            else:
                if response.is_success:
                    return _decode(response)
                error = error_from_response(response, rid)
                wait = attempts.wait(error.retry_after) if response.status_code in RETRY_STATUSES else None
                if wait is None:
                    raise error
            self._sleep(wait)

    def _get_once(self, path: str, request_id: str | None) -> tuple[httpx.Response, str]:
        rid = _request_id(request_id)
        try:
            return self._http.get(path, headers={"X-Request-ID": rid}, timeout=self.timeout), rid
        except httpx.TransportError as e:
            raise QAConnectionError(f"GET {path}: {type(e).__name__}: {e}") from e

    def answer(
        self,
        question: str,
        context: str,
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        allow_no_answer: bool | None = None,
        min_score: float | None = None,
        allow_overlap: bool | None = None,
        align_to_words: bool | None = None,
        request_id: str | None = None,
    ) -> AnswerResult:
        """POST /answer: the top answer spans of `context`. Options left None are not sent."""
        opts = {
            "top_k": top_k,
            "max_answer_length": max_answer_length,
            "allow_no_answer": allow_no_answer,
            "min_score": min_score,
            "allow_overlap": allow_overlap,
            "align_to_words": align_to_words,
        }
        body = self._answer_body(question, context, opts)
        return parse_answer_result(self._call("POST", "/answer", body, request_id))

    def batch_answer(
        self, items: Sequence[AnswerItem | Mapping[str, Any]], *, request_id: str | None = None
    ) -> list[AnswerResult]:
        """POST /batch_answer: one result per item, in order. One invalid item fails the whole call (422)."""
        return parse_batch_results(self._call("POST", "/batch_answer", self._batch_body(items), request_id))

    def read(
        self,
        question: str,
        passages: Sequence[str | Passage | Mapping[str, Any]],
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        allow_no_answer: bool | None = None,
        min_score: float | None = None,
        allow_overlap: bool | None = None,
        align_to_words: bool | None = None,
        return_context: bool | None = None,
        request_id: str | None = None,
    ) -> ReadResult:
        """POST /read: the best spans across all `passages`, each with its passage's index (and id)."""
        opts = {
            "top_k": top_k,
            "max_answer_length": max_answer_length,
            "allow_no_answer": allow_no_answer,
            "min_score": min_score,
            "allow_overlap": allow_overlap,
            "align_to_words": align_to_words,
            "return_context": return_context,
        }
        body = self._read_body(question, passages, opts)
        return parse_read_result(self._call("POST", "/read", body, request_id))

    def health(self, *, request_id: str | None = None) -> Health:
        """GET /livez, once (no retry): is the process alive? Never touches the model."""
        return self._probe(*self._get_once("/livez", request_id))

    def ready(self, *, request_id: str | None = None) -> Health:
        """GET /readyz, once (no retry): can it answer now? False (with the reason) while the model loads."""
        return self._probe(*self._get_once("/readyz", request_id))

    def models(self, *, request_id: str | None = None) -> dict[str, Any]:
        """GET /v1/models, as sent: `data` lists the served model's metadata (name, languages, precision...)."""
        return self._models(self._call("GET", "/v1/models", None, request_id))


class AsyncQAClient(_Base):
    """Asynchronous client, the same methods as QAClient awaited. Use `async with`, or `await aclose()`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        deadline: float = 30.0,
        max_attempts: int = 5,
        max_retry_wait: float = 10.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, deadline, max_attempts, max_retry_wait, headers)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, transport=transport)
        self._sleep = asyncio.sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: Json = None, request_id: str | None = None) -> Json:
        rid = _request_id(request_id)
        attempts = self._attempts()
        while True:
            try:
                response = await self._http.request(
                    method, path, json=body, headers={"X-Request-ID": rid}, timeout=attempts.next_timeout()
                )
            except RETRY_ERRORS as e:
                wait = attempts.wait(None)
                if wait is None:
                    raise QAConnectionError(f"{method} {path}: {type(e).__name__}: {e}") from e
            except httpx.TransportError as e:
                raise QAConnectionError(f"{method} {path}: {type(e).__name__}: {e}") from e
            else:
                if response.is_success:
                    return _decode(response)
                error = error_from_response(response, rid)
                wait = attempts.wait(error.retry_after) if response.status_code in RETRY_STATUSES else None
                if wait is None:
                    raise error
            await self._sleep(wait)

    async def _get_once(self, path: str, request_id: str | None) -> tuple[httpx.Response, str]:
        rid = _request_id(request_id)
        try:
            return await self._http.get(path, headers={"X-Request-ID": rid}, timeout=self.timeout), rid
        except httpx.TransportError as e:
            raise QAConnectionError(f"GET {path}: {type(e).__name__}: {e}") from e

    async def answer(
        self,
        question: str,
        context: str,
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        allow_no_answer: bool | None = None,
        min_score: float | None = None,
        allow_overlap: bool | None = None,
        align_to_words: bool | None = None,
        request_id: str | None = None,
    ) -> AnswerResult:
        """POST /answer: the top answer spans of `context`. Options left None are not sent."""
        opts = {
            "top_k": top_k,
            "max_answer_length": max_answer_length,
            "allow_no_answer": allow_no_answer,
            "min_score": min_score,
            "allow_overlap": allow_overlap,
            "align_to_words": align_to_words,
        }
        body = self._answer_body(question, context, opts)
        return parse_answer_result(await self._call("POST", "/answer", body, request_id))

    async def batch_answer(
        self, items: Sequence[AnswerItem | Mapping[str, Any]], *, request_id: str | None = None
    ) -> list[AnswerResult]:
        """POST /batch_answer: one result per item, in order. One invalid item fails the whole call (422)."""
        return parse_batch_results(await self._call("POST", "/batch_answer", self._batch_body(items), request_id))

    async def read(
        self,
        question: str,
        passages: Sequence[str | Passage | Mapping[str, Any]],
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        allow_no_answer: bool | None = None,
        min_score: float | None = None,
        allow_overlap: bool | None = None,
        align_to_words: bool | None = None,
        return_context: bool | None = None,
        request_id: str | None = None,
    ) -> ReadResult:
        """POST /read: the best spans across all `passages`, each with its passage's index (and id)."""
        opts = {
            "top_k": top_k,
            "max_answer_length": max_answer_length,
            "allow_no_answer": allow_no_answer,
            "min_score": min_score,
            "allow_overlap": allow_overlap,
            "align_to_words": align_to_words,
            "return_context": return_context,
        }
        body = self._read_body(question, passages, opts)
        return parse_read_result(await self._call("POST", "/read", body, request_id))

    async def health(self, *, request_id: str | None = None) -> Health:
        """GET /livez, once (no retry): is the process alive? Never touches the model."""
        return self._probe(*await self._get_once("/livez", request_id))

    async def ready(self, *, request_id: str | None = None) -> Health:
        """GET /readyz, once (no retry): can it answer now? False (with the reason) while the model loads."""
        return self._probe(*await self._get_once("/readyz", request_id))

    async def models(self, *, request_id: str | None = None) -> dict[str, Any]:
        """GET /v1/models, as sent: `data` lists the served model's metadata (name, languages, precision...)."""
        return self._models(await self._call("GET", "/v1/models", None, request_id))
