"""qa_client against httpx.MockTransport: bodies sent, responses parsed, errors built, retries within the deadline."""

from __future__ import annotations

import email.utils
import json
import pickle
import re
from collections.abc import Callable

import httpx
import pytest
from qa_client import (
    Answer,
    AnswerItem,
    AsyncQAClient,
    DeadlineExceeded,
    FieldError,
    InvalidRequest,
    Overloaded,
    Passage,
    QAClient,
    QAConnectionError,
    QAError,
    QAHTTPError,
    ReadAnswer,
    Snippet,
    Unauthorized,
    Unavailable,
)
from qa_client._errors import parse_retry_after

BASE = "http://qa.test"
ANSWER = {"answers": [{"text": "서울", "score": 0.9, "start": 8, "end": 10}], "model": "m", "no_answer_score": None}
ANSWER_BODY = {**ANSWER, "windows": 1}


class FakeClock:
    """Monotonic time that moves only when the client sleeps or a handler says a request took time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that plays `responses` in order (the last repeats) and keeps the requests."""

    def __init__(self, *responses: httpx.Response | Exception, clock: FakeClock | None = None, took: float = 0.0):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.clock = clock
        self.took = took

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.clock is not None:
            self.clock.now += self.took
        r = self.responses[min(len(self.requests), len(self.responses)) - 1]
        if isinstance(r, Exception):
            raise r
        return r

    def bodies(self) -> list[object]:
        return [json.loads(r.content) for r in self.requests]

    def header(self, name: str) -> list[str | None]:
        return [r.headers.get(name) for r in self.requests]


def error(status: int, code: str = "x", headers: dict[str, str] | None = None, **extra: object) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "fields": [], "request_id": None, **extra}}
    return httpx.Response(status, json=body, headers=headers)


def ok(body: object = ANSWER_BODY) -> httpx.Response:
    return httpx.Response(200, json=body)


def client(handler: Handler, clock: FakeClock | None = None, jitter: float = 0.0, **kw: object) -> QAClient:
    c = QAClient(BASE, transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]
    clock = clock or FakeClock()
    c._clock = clock.monotonic
    c._sleep = clock.sleep
    c._random = lambda: jitter
    return c


def aclient(handler: Handler, clock: FakeClock | None = None, **kw: object) -> AsyncQAClient:
    c = AsyncQAClient(BASE, transport=httpx.MockTransport(handler), **kw)  # type: ignore[arg-type]
    clock = clock or FakeClock()
    c._clock = clock.monotonic
    c._sleep = clock.asleep
    c._random = lambda: 0.0
    return c


# --- what is sent ---------------------------------------------------------------------------------------------


def test_answer_sends_only_the_options_set():
    rec = Recorder(ok())
    with client(rec) as qa:
        qa.answer("q", "c")
        qa.answer("q", "c", top_k=3, allow_no_answer=False, min_score=0.2)
        qa.answer("q", "c", max_answer_length=5, allow_overlap=True, align_to_words=False)
    assert rec.bodies() == [
        {"question": "q", "context": "c"},
        {"question": "q", "context": "c", "top_k": 3, "allow_no_answer": False, "min_score": 0.2},
        {"question": "q", "context": "c", "max_answer_length": 5, "allow_overlap": True, "align_to_words": False},
    ]
    assert [r.url.path for r in rec.requests] == ["/answer"] * 3


def test_every_call_has_its_own_request_id_and_the_api_key():
    rec = Recorder(ok())
    with client(rec, api_key="s3cret") as qa:
        qa.answer("q", "c")
        qa.answer("q", "c")
        qa.answer("q", "c", request_id="my-id.1")
    ids = rec.header("x-request-id")
    assert all(re.fullmatch(r"[0-9a-f]{32}", i or "") for i in ids[:2]) and ids[0] != ids[1]
    assert ids[2] == "my-id.1"
    assert set(rec.header("authorization")) == {"Bearer s3cret"}
    assert (rec.requests[0].headers["user-agent"] or "").startswith("qa-service-client/")


def test_no_api_key_no_authorization_header():
    rec = Recorder(ok())
    with client(rec) as qa:
        qa.answer("q", "c")
    assert rec.header("authorization") == [None]


def test_a_request_id_the_server_would_replace_is_refused():
    with client(Recorder(ok())) as qa, pytest.raises(ValueError, match="request_id"):
        qa.answer("q", "c", request_id="has space")


def test_read_serializes_each_kind_of_passage():
    rec = Recorder(ok({"answers": [], "model": "m", "no_answer_score": None, "windows": 4}))
    passages = [
        "plain",
        Passage("text only"),  # sent as a plain string: every server version takes that
        Passage("full", id="doc-1", title="T", meta={"k": 1}),
        {"text": "a dict", "id": "doc-2", "title": None},
    ]
    with client(rec) as qa:
        qa.read("q", passages)
        qa.read("q", ["p"], top_k=2, return_context=True)
    assert rec.bodies() == [
        {
            "question": "q",
            "passages": [
                "plain",
                "text only",
                {"text": "full", "id": "doc-1", "title": "T", "meta": {"k": 1}},
                {"text": "a dict", "id": "doc-2"},
            ],
        },
        {"question": "q", "passages": ["p"], "top_k": 2, "return_context": True},
    ]
    assert rec.requests[0].url.path == "/read"


def test_read_refuses_one_passage_in_place_of_a_list_and_unknown_passage_types():
    with client(Recorder(ok())) as qa:
        with pytest.raises(TypeError, match="list of passages"):
            qa.read("q", "one string")
        with pytest.raises(TypeError, match="passage is a str"):
            qa.read("q", [3])  # type: ignore[list-item]


def test_batch_answer_takes_dicts_and_answer_items():
    rec = Recorder(ok({"results": [ANSWER_BODY, {**ANSWER_BODY, "answers": []}]}))
    with client(rec) as qa:
        results = qa.batch_answer([{"question": "a", "context": "b", "top_k": None}, AnswerItem("c", "d", top_k=2)])
    assert rec.bodies() == [
        {"items": [{"question": "a", "context": "b"}, {"question": "c", "context": "d", "top_k": 2}]}
    ]
    assert [r.best for r in results] == [Answer("서울", 0.9, 8, 10), None]
    with client(rec) as qa, pytest.raises(TypeError, match="batch item"):
        qa.batch_answer(["not an item"])  # type: ignore[list-item]


# --- what is parsed -------------------------------------------------------------------------------------------


def test_answer_result_is_parsed_into_frozen_dataclasses():
    with client(Recorder(ok({**ANSWER_BODY, "no_answer_score": 1e-5, "windows": 3}))) as qa:
        result = qa.answer("q", "c")
    assert result.answers == (Answer("서울", 0.9, 8, 10),)
    assert (result.model, result.no_answer_score, result.windows) == ("m", 1e-5, 3)
    with pytest.raises(AttributeError):
        result.model = "x"  # type: ignore[misc]


def test_parsing_is_lenient_missing_new_fields_are_none_unknown_ones_ignored():
    body = {"answers": [{"text": "a", "score": 1, "start": 0, "end": 1, "new": [1]}], "shiny": True}
    with client(Recorder(ok(body))) as qa:
        result = qa.answer("q", "c")
    assert result.answers == (Answer("a", 1.0, 0, 1),)
    assert (result.model, result.no_answer_score, result.windows) == (None, None, None)
    assert result.raw["shiny"] is True


def test_read_answers_today_and_with_the_planned_fields():
    today = {"text": "서울", "score": 0.5, "passage": 1, "start": 2, "end": 4}
    planned = {
        **today,
        "id": "doc-9",
        "title": "서울",
        "snippet": {"text": "…은 서울이다", "start": 3, "end": 5},
    }
    body = {"answers": [today, planned, {**today, "id": None, "snippet": None}], "model": "m", "windows": 2}
    with client(Recorder(ok(body))) as qa:
        result = qa.read("q", ["a", "b"])
    old, new, nulls = result.answers
    assert old == ReadAnswer("서울", 0.5, 2, 4, passage=1, id=None, snippet=None)
    assert new.id == "doc-9" and new.title == "서울" and new.snippet == Snippet("…은 서울이다", 3, 5)
    assert new.snippet.text[new.snippet.start : new.snippet.end] == new.text
    assert nulls == old and isinstance(old, Answer)
    assert result.no_answer_score is None and result.best == old


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"model": "m"},
        {"answers": [{"text": "a", "start": 0, "end": 1}]},
        {"answers": [{"text": "a", "score": 0.1, "start": "0", "end": 1}]},
    ],
)
def test_a_body_without_the_core_fields_is_a_qa_error(body):
    with client(Recorder(ok(body))) as qa, pytest.raises(QAError, match="unexpected response"):
        qa.answer("q", "c")


def test_a_success_that_is_not_json_is_a_qa_error():
    with client(Recorder(httpx.Response(200, text="<html>"))) as qa, pytest.raises(QAError, match="not JSON"):
        qa.answer("q", "c")


# --- errors ---------------------------------------------------------------------------------------------------


def test_422_is_not_retried_and_carries_code_fields_and_request_id():
    body = {
        "error": {
            "code": "invalid_request",
            "message": "question: must not be empty or whitespace only",
            "fields": [{"field": "question", "reason": "must not be empty or whitespace only"}],
            "request_id": "rid-1",
        }
    }
    clock = FakeClock()
    rec = Recorder(httpx.Response(422, json=body))
    with client(rec, clock) as qa, pytest.raises(InvalidRequest) as caught:
        qa.answer(" ", "c", request_id="rid-1")
    e = caught.value
    assert len(rec.requests) == 1 and clock.sleeps == []
    assert (e.status, e.code, e.request_id) == (422, "invalid_request", "rid-1")
    assert e.fields == (FieldError("question", "must not be empty or whitespace only"),)
    assert "invalid_request" in str(e) and "rid-1" in str(e)
    # it survives a process boundary (concurrent.futures, multiprocessing) whole
    copy = pickle.loads(pickle.dumps(e))
    assert type(copy) is InvalidRequest and (copy.fields, copy.request_id) == (e.fields, e.request_id)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, InvalidRequest), (401, Unauthorized), (413, InvalidRequest), (500, QAHTTPError), (504, DeadlineExceeded)],
)
def test_other_errors_are_final(status, kind):
    rec = Recorder(error(status, headers={"Retry-After": "1"}))
    with client(rec) as qa, pytest.raises(kind) as caught:
        qa.answer("q", "c")
    assert len(rec.requests) == 1 and caught.value.status == status


def test_a_non_json_error_body_becomes_the_message_and_keeps_our_request_id():
    rec = Recorder(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with client(rec) as qa, pytest.raises(QAHTTPError) as caught:
        qa.answer("q", "c")
    e = caught.value
    assert (e.status, e.code, e.fields) == (502, None, ())
    assert "Bad Gateway" in e.message and e.request_id == rec.header("x-request-id")[0]


def test_the_request_id_falls_back_to_the_response_header():
    body = {"error": {"code": "body_too_large", "message": "too big", "request_id": None}}
    rec = Recorder(httpx.Response(413, json=body, headers={"X-Request-ID": "from-server"}))
    with client(rec) as qa, pytest.raises(InvalidRequest) as caught:
        qa.answer("q", "c")
    assert caught.value.request_id == "from-server" and caught.value.code == "body_too_large"


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == 30.0


# --- retries --------------------------------------------------------------------------------------------------


def test_429_and_503_are_retried_after_retry_after_with_the_same_request_id():
    clock = FakeClock()
    rec = Recorder(
        error(429, headers={"Retry-After": "3"}), error(503, headers={"Retry-After": "2"}), ok(), clock=clock
    )
    with client(rec, clock) as qa:
        result = qa.answer("q", "c")
    assert result.best == Answer("서울", 0.9, 8, 10)
    assert clock.sleeps == [3.0, 2.0]
    assert len(set(rec.header("x-request-id"))) == 1


def test_each_sleep_is_capped_and_jittered():
    clock = FakeClock()
    rec = Recorder(error(429, headers={"Retry-After": "120"}), error(429, headers={"Retry-After": "0"}), ok())
    with client(rec, clock, jitter=1.0, max_retry_wait=10.0, deadline=60.0) as qa:
        qa.answer("q", "c")
    # the cap, plus the most jitter (10% of the sleep, at least of 1 s)
    assert clock.sleeps == pytest.approx([11.0, 0.1])


def test_without_retry_after_the_backoff_doubles():
    clock = FakeClock()
    rec = Recorder(httpx.Response(503, text="proxy says no"), httpx.Response(503, text="again"), ok())
    with client(rec, clock) as qa:
        qa.answer("q", "c")
    assert clock.sleeps == [0.5, 1.0]


def test_no_retry_would_end_past_the_deadline_and_the_last_error_is_raised():
    clock = FakeClock()
    # every attempt takes 1 s and is told to come back in 8 s: attempts start at 0, 9, 18 and 27 s;
    # a fifth would start at 36 s, past the 30 s deadline
    rec = Recorder(error(429, "overloaded", headers={"Retry-After": "8"}), clock=clock, took=1.0)
    start = clock.now
    with client(rec, clock, deadline=30.0, max_attempts=10, timeout=60.0) as qa, pytest.raises(Overloaded) as caught:
        qa.answer("q", "c")
    assert len(rec.requests) == 4 and clock.sleeps == [8.0, 8.0, 8.0]
    assert clock.now - start == 28.0
    assert caught.value.retry_after == 8.0 and caught.value.code == "overloaded"
    # the first attempt has the full timeout; a retry only what is left of the deadline
    reads = [r.extensions["timeout"]["read"] for r in rec.requests]
    assert reads == [60.0, 21.0, 12.0, 3.0]


def test_retry_after_longer_than_the_deadline_fails_at_once():
    clock = FakeClock()
    rec = Recorder(error(503, "not_ready", headers={"Retry-After": "5"}))
    with client(rec, clock, deadline=4.0) as qa, pytest.raises(Unavailable) as caught:
        qa.answer("q", "c")
    assert len(rec.requests) == 1 and clock.sleeps == [] and caught.value.retry_after == 5.0


def test_max_attempts_bounds_the_retries():
    clock = FakeClock()
    rec = Recorder(error(503, headers={"Retry-After": "1"}))
    with client(rec, clock, max_attempts=3) as qa, pytest.raises(Unavailable):
        qa.answer("q", "c")
    assert len(rec.requests) == 3 and clock.sleeps == [1.0, 1.0]
    rec = Recorder(error(503, headers={"Retry-After": "1"}))
    with client(rec, clock, max_attempts=1) as qa, pytest.raises(Unavailable):
        qa.answer("q", "c")
    assert len(rec.requests) == 1


def test_a_connection_error_before_any_response_is_retried():
    clock = FakeClock()
    rec = Recorder(httpx.ConnectError("refused"), httpx.RemoteProtocolError("server disconnected"), ok())
    with client(rec, clock) as qa:
        assert qa.answer("q", "c").best is not None
    assert clock.sleeps == [0.5, 1.0]


def test_connection_errors_that_outlast_the_retries_are_a_connection_error():
    clock = FakeClock()
    rec = Recorder(httpx.ConnectError("refused"))
    with client(rec, clock, max_attempts=2) as qa, pytest.raises(QAConnectionError) as caught:
        qa.answer("q", "c")
    assert len(rec.requests) == 2 and isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_read_timeout_is_not_retried():
    rec = Recorder(httpx.ReadTimeout("slow"), ok())
    with client(rec) as qa, pytest.raises(QAConnectionError, match="ReadTimeout"):
        qa.answer("q", "c")
    assert len(rec.requests) == 1


# --- probes and models ----------------------------------------------------------------------------------------


def test_probes_answer_once_and_a_503_is_not_ready_rather_than_an_error():
    rec = Recorder(
        httpx.Response(200, json={"status": "alive", "detail": ""}),
        httpx.Response(503, json={"status": "not_ready", "detail": "loading model"}, headers={"Retry-After": "1"}),
    )
    with client(rec) as qa:
        alive = qa.health()
        ready = qa.ready()
    assert alive and alive.status == "alive"
    assert not ready and (ready.status, ready.detail) == ("not_ready", "loading model")
    assert [r.url.path for r in rec.requests] == ["/livez", "/readyz"]


def test_a_probe_that_cannot_connect_raises_at_once():
    rec = Recorder(httpx.ConnectError("refused"))
    with client(rec) as qa, pytest.raises(QAConnectionError):
        qa.ready()
    assert len(rec.requests) == 1


def test_models_returns_the_body_as_sent():
    body = {"object": "list", "data": [{"id": "m", "name": "m"}], "limits": {"max_top_k": 20}}
    rec = Recorder(ok(body), ok({"object": "list"}))
    with client(rec) as qa:
        assert qa.models() == body
        with pytest.raises(QAError, match="'data'"):
            qa.models()
    assert rec.requests[0].method == "GET" and rec.requests[0].url.path == "/v1/models"


def test_a_base_url_with_a_path_prefix_is_kept():
    rec = Recorder(ok())
    with QAClient("http://qa.test/prefix/", transport=httpx.MockTransport(rec)) as qa:
        qa.answer("q", "c")
    assert str(rec.requests[0].url) == "http://qa.test/prefix/answer"


def test_the_context_manager_closes_the_connection_pool():
    with client(Recorder(ok())) as qa:
        pass
    assert qa._http.is_closed


# --- async ----------------------------------------------------------------------------------------------------


async def test_async_answer_read_and_batch():
    rec = Recorder(
        ok(),
        ok({"answers": [{"text": "서울", "score": 0.5, "passage": 1, "start": 0, "end": 2}], "windows": 2}),
        ok({"results": [ANSWER_BODY]}),
    )
    async with aclient(rec, api_key="k") as qa:
        answered = await qa.answer("q", "c", top_k=2)
        read = await qa.read("q", ["a", Passage("서울", id="p")])
        batch = await qa.batch_answer([AnswerItem("q", "c")])
    assert answered.best == Answer("서울", 0.9, 8, 10)
    assert read.best == ReadAnswer("서울", 0.5, 0, 2, passage=1)
    assert [r.best for r in batch] == [answered.best]
    assert rec.bodies() == [
        {"question": "q", "context": "c", "top_k": 2},
        {"question": "q", "passages": ["a", {"text": "서울", "id": "p"}]},
        {"items": [{"question": "q", "context": "c"}]},
    ]
    assert set(rec.header("authorization")) == {"Bearer k"}
    assert qa._http.is_closed


async def test_async_retries_429_honouring_retry_after_then_raises_past_the_deadline():
    clock = FakeClock()
    rec = Recorder(error(429, headers={"Retry-After": "2"}), ok())
    async with aclient(rec, clock) as qa:
        await qa.answer("q", "c")
    assert clock.sleeps == [2.0]
    rec = Recorder(error(429, "overloaded", headers={"Retry-After": "7"}), clock=clock, took=1.0)
    async with aclient(rec, clock, deadline=10.0) as qa:
        with pytest.raises(Overloaded):
            await qa.answer("q", "c")
    assert len(rec.requests) == 2 and clock.sleeps == [2.0, 7.0]


async def test_async_422_probes_and_models():
    rec = Recorder(
        error(422, "invalid_request", fields=[{"field": "top_k", "reason": "too big"}]),
        httpx.Response(503, json={"status": "not_ready", "detail": "loading model"}),
        httpx.Response(200, json={"status": "alive", "detail": ""}),
        ok({"data": [{"id": "m"}]}),
    )
    async with aclient(rec) as qa:
        with pytest.raises(InvalidRequest) as caught:
            await qa.answer("q", "c", top_k=99)
        assert caught.value.fields == (FieldError("top_k", "too big"),)
        assert not await qa.ready()
        assert await qa.health()
        assert (await qa.models())["data"] == [{"id": "m"}]
    assert len(rec.requests) == 4
