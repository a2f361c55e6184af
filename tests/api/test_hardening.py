"""Hostile and careless input: request ids, echo limits, JSON edge cases, 405, auth, offline docs, retry hints."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.errors import MAX_ECHO_CHARS
from app.engine.errors import ClientDisconnected, Overloaded, ShuttingDown
from app.main import create_app
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

OK = {"question": "where is seoul", "context": "it is in seoul"}


def client_for(engine: FakeEngine | None = None, **settings) -> TestClient:
    engine = engine or FakeEngine()
    return TestClient(create_app(Settings(max_top_k=5, **settings), lambda s, m: engine))


@pytest.fixture
def client():
    with client_for() as c:
        yield c


@pytest.mark.parametrize("rid", ["abc-123_X.y", "a" * 128])
def test_safe_request_id_is_echoed(client, rid):
    r = client.post("/answer", json={}, headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid
    assert r.json()["error"]["request_id"] == rid


@pytest.mark.parametrize("rid", ["<script>alert(1)</script>", "a" * 129, "id with spaces", "../../etc/passwd"])
def test_unsafe_request_id_is_replaced_not_echoed(client, rid):
    r = client.post("/answer", json={}, headers={"x-request-id": rid})
    fresh = r.headers["x-request-id"]
    assert fresh != rid and len(fresh) == 32 and fresh.isalnum()
    assert r.json()["error"]["request_id"] == fresh
    assert rid not in r.text


def test_error_bodies_do_not_echo_unbounded_input(client):
    key = "k" * 10_000
    r = client.post("/answer", json={**OK, key: 1, **{f"x{i}": i for i in range(100)}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert len(err["fields"]) <= 20
    assert all(len(f["field"]) <= MAX_ECHO_CHARS and len(f["reason"]) <= MAX_ECHO_CHARS for f in err["fields"])
    assert len(r.content) < 10_000


@pytest.mark.parametrize(
    "raw",
    [
        b'{"question": "\xff\xfe", "context": "x"}',  # invalid UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # would blow the parser's recursion
        b'{"question": "q", "context": "c", "x": ' + b"[" * 34 + b"1" + b"]" * 34 + b"}",
    ],
    ids=["invalid-utf8", "deep-100k", "deep-34"],
)
def test_undecodable_or_too_deep_json_is_400_invalid_json(raw):
    with client_for(max_body_bytes=1 << 20) as c:
        r = c.post("/answer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"


def test_brackets_inside_strings_do_not_count_as_nesting(client):
    r = client.post("/answer", json={**OK, "question": "[[[[" * 20 + "{{{{" * 20 + ' \\" seoul'})
    assert r.status_code == 200


def test_method_not_allowed_keeps_allow_header(client):
    r = client.get("/answer")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "http_405"


def test_integral_float_is_an_integer_as_the_schema_says(client):
    assert client.post("/answer", json={**OK, "top_k": 3.0}).status_code == 200
    for bad in (3.5, "3", True):
        r = client.post("/answer", json={**OK, "top_k": bad})
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "top_k", bad
    schema = client.get("/openapi.json").json()["components"]["schemas"]["AnswerRequest"]["properties"]["top_k"]
    assert schema["type"] == "integer"


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text.replace("https://fastapi", "")
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert client.get(asset).status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc's page loads a logo from its CDN: off


def test_docs_can_be_switched_off():
    with client_for(docs=False) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 404
        assert c.post("/answer", json=OK).status_code == 200


def test_overloaded_retry_after_comes_from_the_estimate():
    engine = FakeEngine()
    with client_for(engine) as c:
        engine.answer = _raiser(Overloaded("busy", retry_after=7.2))  # type: ignore[method-assign]
        r = c.post("/answer", json=OK)
    assert r.status_code == 429 and r.headers["retry-after"] == "8"


def test_shutting_down_is_json_503_and_disconnect_is_counted_as_499():
    engine = FakeEngine()
    with client_for(engine) as c:
        engine.answer = _raiser(ShuttingDown("server shut down"))  # type: ignore[method-assign]
        r = c.post("/answer", json=OK, headers={"x-request-id": "drain-1"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert r.json()["error"]["request_id"] == "drain-1" and r.headers["x-request-id"] == "drain-1"
        engine.answer = _raiser(ClientDisconnected("gone"))  # type: ignore[method-assign]
        c.post("/answer", json=OK)
        metrics = c.get("/metrics").text
    assert 'qa_requests_total{endpoint="/answer",outcome="499"} 1.0' in metrics
    assert 'outcome="500"' not in metrics


def _raiser(exc: Exception):
    async def answer(requests, cancelled=None):
        raise exc

    return answer


# --------------------------------------------------------------------------- auth
def test_api_key_guards_the_qa_api_but_not_the_probes():
    with client_for(api_key="s3cret-key") as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-key"}):
            r = c.post("/answer", json=OK, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/answer", json=OK, headers={"authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.post("/batch_answer", json={"items": [OK]}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        for probe in ("/livez", "/readyz", "/metrics"):
            assert c.get(probe).status_code == 200, probe


def test_metrics_can_require_the_key():
    with client_for(api_key="k1", metrics_auth=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"authorization": "Bearer k1"}).status_code == 200


def test_keys_file_is_reread_when_it_changes(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team A\nalpha\n\nbeta\n")
    with client_for(api_keys_file=keys) as c:
        ok = {"authorization": "Bearer beta"}
        assert c.post("/answer", json=OK, headers=ok).status_code == 200
        keys.write_text("gamma\n")
        import os

        os.utime(keys, (1, 1))  # a different mtime, even within the filesystem's timestamp resolution
        assert c.post("/answer", json=OK, headers=ok).status_code == 401
        assert c.post("/answer", json=OK, headers={"authorization": "Bearer gamma"}).status_code == 200


def test_missing_keys_file_is_a_settings_error(tmp_path):
    with pytest.raises(ValueError, match="api_keys_file"):
        Settings(api_keys_file=tmp_path / "nope")
