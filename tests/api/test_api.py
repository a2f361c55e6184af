"""HTTP contract with a fake engine: validation (field + reason), the error table, isolation, health."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.demo import STATIC_DIR
from app.api.schemas import check_text
from app.engine.errors import DeadlineExceeded, NotReady, Overloaded
from app.main import create_app
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

SETTINGS = Settings(
    max_question_chars=50,
    max_context_chars=200,
    max_batch_items=3,
    max_top_k=5,
    max_answer_length_limit=64,
    max_body_bytes=4096,
    max_passages=3,
    max_total_chars=300,
)
OK = {"question": "where is seoul", "context": "it is in seoul"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine):
    with TestClient(create_app(SETTINGS, lambda s, m: engine)) as c:
        yield c


def field_of(r: httpx.Response) -> str:
    return r.json()["error"]["fields"][0]["field"]


def test_answer_ok(client):
    r = client.post("/answer", json=OK)
    assert r.status_code == 200
    assert r.json()["answers"] == [{"text": "seoul", "score": 1.0, "start": 9, "end": 14}]
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"question": ""}, "question", "at least 1"),
        ({"question": " \t\n "}, "question", "whitespace"),
        ({"context": "   "}, "context", "whitespace"),
        ({"question": "q" * 51}, "question", "at most 50"),
        ({"context": "c" * 201}, "context", "at most 200"),
        ({"top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"top_k": 6}, "top_k", "less than or equal to 5"),
        ({"max_answer_length": 0}, "max_answer_length", "greater than or equal to 1"),
        ({"max_answer_length": 65}, "max_answer_length", "less than or equal to 64"),
        ({"question": 123}, "question", "valid string"),
        ({"top_k": "3"}, "top_k", "valid integer"),
        ({"top_k": 2.5}, "top_k", "valid integer"),
        ({"allow_no_answer": "yes"}, "allow_no_answer", "valid boolean"),
        ({"topk": 3}, "topk", "Extra inputs"),
        ({"question": None}, "question", "valid string"),
    ],
)
def test_bad_fields_get_422_naming_field(client, engine, patch, field, reason):
    r = client.post("/answer", json={**OK, **patch})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert field_of(r) == field
    assert reason in err["fields"][0]["reason"]
    assert engine.calls == []  # nothing reached the model


def test_missing_field(client):
    r = client.post("/answer", json={"question": "q"})
    assert r.status_code == 422 and field_of(r) == "context"


@pytest.mark.parametrize(
    "raw", [b'{"question": "\\ud800", "context": "x"}', b'{"question": "a\\udfffb", "context": "x"}']
)
def test_lone_surrogates_are_422(client, raw):
    r = client.post("/answer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and field_of(r) == "question"


def test_lone_surrogate_reason_is_clear():
    with pytest.raises(ValueError, match="lone surrogate"):
        check_text("ab\ud800")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2", "\ufeff{}".encode()])
def test_not_json_is_400(client, raw):
    r = client.post("/answer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    assert r.status_code == 400 or r.json()["error"]["fields"]


def test_body_not_an_object_is_422(client):
    r = client.post("/answer", json=["question", "context"])
    assert r.status_code == 422


def test_body_over_limit_is_413(client):
    big = json.dumps({**OK, "context": "x" * 5000}).encode()
    r = client.post("/answer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/answer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_batch_ok_and_ordered(client):
    items = [{"question": "find alpha", "context": "alpha beta"}, {"question": "find beta", "context": "alpha beta"}]
    r = client.post("/batch_answer", json={"items": items})
    assert r.status_code == 200
    assert [res["answers"][0]["text"] for res in r.json()["results"]] == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [OK] * 4}, "items"),
        ({"items": [OK, {**OK, "top_k": 0}]}, "items.1.top_k"),
        ({"items": [OK, OK, {**OK, "context": ""}]}, "items.2.context"),
        ({"items": "nope"}, "items"),
        ({}, "items"),
    ],
)
def test_batch_validates_whole_body_first(client, engine, body, field):
    r = client.post("/batch_answer", json=body)
    assert r.status_code == 422
    assert field_of(r) == field
    assert engine.calls == []


def test_engine_input_too_large_names_item(client):
    client.app.state.engine.max_context_words = 2
    r = client.post(
        "/batch_answer", json={"items": [{"question": "q", "context": "a b"}, {"question": "q", "context": "a b c"}]}
    )
    assert r.status_code == 422 and field_of(r) == "items.1.context"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (Overloaded("full"), 429, "overloaded"),
        (DeadlineExceeded("late"), 504, "deadline_exceeded"),
        (NotReady("loading"), 503, "not_ready"),
    ],
)
def test_error_table(engine, exc, status, code):
    async def boom(requests, cancelled=None):
        raise exc

    engine.answer = boom  # type: ignore[method-assign]
    with TestClient(create_app(SETTINGS, lambda s, m: engine)) as c:
        r = c.post("/answer", json=OK, headers={"x-request-id": "abc"})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["request_id"] == "abc"
    if status in (429, 503):
        assert r.headers["retry-after"] == "1"


async def test_failing_request_does_not_disturb_others():
    engine = FakeEngine(latency_s=0.05, fail_on="poison")
    app = create_app(SETTINGS, lambda s, m: engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        good = [c.post("/answer", json={"question": f"find w{i}", "context": f"here is w{i}"}) for i in range(5)]
        bad = c.post("/answer", json={"question": "poison", "context": "x"})
        results = await asyncio.gather(*good, bad)
    assert [r.status_code for r in results[:5]] == [200] * 5
    assert [r.json()["answers"][0]["text"] for r in results[:5]] == [f"w{i}" for i in range(5)]
    assert results[5].status_code == 500 and results[5].json()["error"]["code"] == "inference_failed"


def test_health_endpoints(client, engine):
    assert client.get("/livez").json()["status"] == "alive"
    assert client.get("/readyz").status_code == 200
    engine.ready = False
    assert client.get("/readyz").status_code == 503
    assert client.get("/livez").status_code == 200  # liveness does not depend on the model
    engine.alive = False
    assert client.get("/livez").status_code == 503


def test_models_metrics_docs(client):
    assert client.get("/v1/models").json()["data"][0]["name"] == "fake"
    client.post("/answer", json=OK)
    client.post("/answer", json={})
    text = client.get("/metrics").text
    assert 'qa_requests_total{endpoint="/answer",outcome="200"} 1.0' in text
    assert 'qa_requests_total{endpoint="/answer",outcome="422"} 1.0' in text
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AnswerRequest"]["properties"]
    assert schema["question"]["maxLength"] == 50 and schema["top_k"]["maximum"] == 5


def test_unknown_path_is_404_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "http_404"


def test_read_ranks_answers_across_passages(client, engine):
    passages = ["not here", "then seoul", "seoul first"]
    r = client.post("/read", json={"question": "find seoul", "passages": passages, "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(a["passage"], a["start"], a["end"], a["text"]) for a in body["answers"]] == [
        (2, 0, 5, "seoul"),
        (1, 5, 10, "seoul"),
    ]
    assert body["no_answer_score"] is None and body["model"] == "fake"
    [[call]] = engine.calls
    assert call.passages == tuple(passages) and call.options.top_k == 5


@pytest.mark.parametrize(
    ("patch", "field", "reason"),
    [
        ({"passages": []}, "passages", "at least 1"),
        ({"passages": ["a", "b", "c", "d"]}, "passages", "at most 3"),
        ({"passages": ["ok", ""]}, "passages.1.text", "at least 1"),
        ({"passages": ["ok", "ok", " \n "]}, "passages.2.text", "whitespace"),
        ({"passages": ["c" * 201]}, "passages.0.text", "at most 200"),
        ({"passages": [{"id": "d1", "text": "c" * 201}]}, "passages.0.text", "at most 200"),
        ({"passages": [{"id": "d1"}]}, "passages.0.text", "required"),
        ({"passages": [{"text": "ok", "url": "x"}]}, "passages.0.url", "Extra inputs"),
        ({"passages": [{"text": "ok", "id": 7}]}, "passages.0.id", "valid string"),
        ({"passages": ["c" * 150, "c" * 151]}, "passages", "301 characters together; at most 300"),
        ({"passages": ["ok", 5]}, "passages.1", "must be a string, or an object with text"),
        ({"passages": "one passage"}, "passages", "valid list"),
        ({"passages": ["ok", "a\ud800"]}, "passages.1.text", "unicode"),
        ({"min_score": 1.5}, "min_score", "less than or equal to 1"),
        ({"allow_overlap": "yes"}, "allow_overlap", "valid boolean"),
        ({"context": "ok"}, "context", "Extra inputs"),
        ({"question": " "}, "question", "whitespace"),
        ({"top_k": 6}, "top_k", "less than or equal to 5"),
    ],
)
def test_read_bad_fields_get_422_naming_the_passage(client, engine, patch, field, reason):
    body = {"question": "find seoul", "passages": ["seoul"], **patch}
    # json.dumps escapes a lone surrogate as JSON allows ("\\ud800"); httpx's json= would refuse it
    r = client.post("/read", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert field_of(r) == field
    assert reason in err["fields"][0]["reason"]
    assert engine.calls == []


def test_read_engine_input_too_large_names_passage(client):
    client.app.state.engine.max_context_words = 2
    r = client.post("/read", json={"question": "q", "passages": ["a b", "a b", "a b c"]})
    assert r.status_code == 422 and field_of(r) == "passages.2"
    assert r.json()["error"]["code"] == "input_too_large"


def test_read_in_openapi_with_limits(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    passages = schemas["ReadRequest"]["properties"]["passages"]
    text, obj = passages["items"]["anyOf"]  # a plain string, or an object with an id
    assert passages["maxItems"] == 3 and text["maxLength"] == 200 and obj["properties"]["text"]["maxLength"] == 200
    assert "passage" in schemas["ReadAnswerOut"]["properties"]
    client.post("/read", json={"question": "find x", "passages": ["x"]})
    assert 'qa_requests_total{endpoint="/read",outcome="200"} 1.0' in client.get("/metrics").text


def test_demo_page_is_served_offline(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        assert f"static/{asset}" in r.text
        got = client.get(f"/static/{asset}")
        assert got.status_code == 200 and kind in got.headers["content-type"]
    for f in STATIC_DIR.iterdir():
        text = f.read_text(encoding="utf-8")
        # nothing from another origin: no CDN, no web fonts, no remote images
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f.name
        assert "@import" not in text and "innerHTML" not in text, f.name


def test_demo_can_be_switched_off(engine):
    with TestClient(create_app(SETTINGS.model_copy(update={"demo": False}), lambda s, m: engine)) as c:
        assert c.get("/").status_code == 404
        assert c.get("/static/app.js").status_code == 404
        assert c.post("/answer", json=OK).status_code == 200


def test_read_passages_with_ids_echo_them_and_strings_still_work(client, engine):
    passages = [
        {"id": "doc-3", "text": "nothing here"},
        {"id": "doc-7", "title": "Seoul", "text": "the capital is seoul", "meta": {"source": "wiki", "rank": 2}},
        "seoul again, said the third passage",
    ]
    r = client.post("/read", json={"question": "find seoul", "passages": passages, "top_k": 5})
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert [(a["passage"], a["id"], a["title"]) for a in answers] == [(2, None, None), (1, "doc-7", "Seoul")]
    assert all(a["snippet"] is None for a in answers)
    # the engine saw the texts only
    assert engine.calls[-1][0].passages == (
        "nothing here",
        "the capital is seoul",
        "seoul again, said the third passage",
    )


def test_read_return_context_gives_a_snippet_with_the_span_inside(client):
    text = " ".join(f"word{i}" for i in range(12)) + " seoul " + " ".join(f"tail{i}" for i in range(12))
    r = client.post("/read", json={"question": "find seoul", "passages": [text], "return_context": True})
    assert r.status_code == 200, r.text
    [a] = r.json()["answers"]
    snip = a["snippet"]
    assert snip["text"][snip["start"] : snip["end"]] == "seoul" == text[a["start"] : a["end"]]
    assert 80 <= len(snip["text"]) <= 110
    # cut at spaces, so no word is halved at either edge
    assert text.index(snip["text"]) == 0 or text[text.index(snip["text"]) - 1] == " "
    assert snip["text"].split()[0] in text.split() and snip["text"].split()[-1] in text.split()


def test_options_reach_the_engine(client, engine):
    options = {"min_score": 0.2, "allow_overlap": True, "align_to_words": True, "allow_no_answer": True, "top_k": 3}
    assert client.post("/answer", json={**OK, **options}).status_code == 200
    [request] = engine.calls[-1]
    assert request.passages == (OK["context"],)
    o = request.options
    assert (o.top_k, o.min_score, o.allow_overlap, o.align_to_words, o.allow_no_answer) == (3, 0.2, True, True, True)
    r = client.post("/read", json={"question": "find seoul", "passages": ["seoul"], "min_score": 1})
    assert r.status_code == 200 and engine.calls[-1][0].options.min_score == 1.0


def test_openapi_explains_itself(client):
    """Every operation has a written summary (not one generated from the function name) and every field of every
    body a description; the request bodies carry examples, so /docs pre-fills a real question, not "string"."""
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            generated = op["operationId"].split("_")[0].replace("_", " ").title()
            assert op.get("summary") and op["summary"] != generated and " " in op["summary"], (method, path)
    for name, schema in spec["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue  # FastAPI's own, never sent: errors use ErrorResponse
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} has no description"
    for name in ("AnswerRequest", "BatchAnswerRequest", "ReadRequest"):
        examples = spec["components"]["schemas"][name]["examples"]
        assert examples and "string" not in json.dumps(examples)
