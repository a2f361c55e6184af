"""Hostile and careless input: request ids, echo limits, JSON edge cases, media types, 404/405 hints, HEAD, auth,
CORS, offline docs, retry hints, disconnects in /metrics, and the error table against docs/api.md."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api.errors import ERROR_CODES, ERROR_TABLE, MAX_ECHO_CHARS
from app.engine.errors import ClientDisconnected, Overloaded, ShuttingDown
from app.main import create_app
from app.settings import Settings
from tests.support.fake_engine import FakeEngine

REPO = Path(__file__).resolve().parents[2]

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


def test_method_not_allowed_keeps_allow_header_and_says_to_post_json(client):
    r = client.get("/answer")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    error = r.json()["error"]
    assert error["code"] == "http_405"
    assert "POST" in error["message"] and "application/json" in error["message"]


def test_unknown_path_lists_the_endpoints(client):
    r = client.get("/v1/answer")
    assert r.status_code == 404 and r.json()["error"]["code"] == "http_404"
    message = r.json()["error"]["message"]
    for endpoint in ("POST /answer", "POST /batch_answer", "POST /read", "GET /v1/models", "GET /livez"):
        assert endpoint in message
    assert "/v1/answer" not in message  # the path is not echoed


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/"])
def test_head_on_probes_and_the_page_is_get_without_a_body(client, path):
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "multipart/form-data; boundary=x"},
        {"content-type": "application/jsonp"},
    ],
    ids=["none", "text", "form", "multipart", "jsonp"],
)
@pytest.mark.parametrize("path", ["/answer", "/batch_answer", "/read"])
def test_a_body_that_is_not_declared_json_is_415_naming_content_type(client, path, headers):
    r = client.post(path, content=b'{"question": "q", "context": "c"}', headers=headers)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type" in error["message"] and "application/json" in error["message"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/x+json"])
def test_json_media_types_with_parameters_are_accepted(client, content_type):
    r = client.post(
        "/answer", content=b'{"question": "q seoul", "context": "seoul"}', headers={"content-type": content_type}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate", "zstd"])
def test_compressed_bodies_are_415_naming_content_encoding(client, encoding):
    r = client.post("/answer", json=OK, headers={"content-encoding": encoding})
    assert r.status_code == 415
    error = r.json()["error"]
    assert error["code"] == "unsupported_encoding" and "Content-Encoding" in error["message"]
    assert client.post("/answer", json=OK, headers={"content-encoding": "identity"}).status_code == 200


def test_library_plain_text_errors_become_json(client):
    r = client.get("/static/app.js", headers={"range": "bytes=99999999-"})
    assert r.status_code == 416
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "range_not_satisfiable"


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
        os.utime(keys, (1, 1))  # a different mtime, even within the filesystem's timestamp resolution
        assert c.post("/answer", json=OK, headers=ok).status_code == 401
        assert c.post("/answer", json=OK, headers={"authorization": "Bearer gamma"}).status_code == 200


def test_missing_keys_file_is_a_settings_error(tmp_path):
    with pytest.raises(ValueError, match="QA_API_KEYS_FILE"):
        Settings(api_keys_file=tmp_path / "nope")


def test_api_key_is_stripped_so_a_trailing_newline_still_matches():
    with client_for(api_key="s3cret\n") as c:
        assert c.post("/answer", json=OK, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/answer", json=OK, headers={"authorization": "Bearer s3cret\n"}).status_code == 200


@pytest.mark.parametrize("key", ["", "   ", "\n", "\t \r\n"])
def test_empty_or_blank_api_key_is_refused(key):
    with pytest.raises(ValidationError, match="empty or whitespace"):
        Settings(api_key=key)


def test_keys_file_without_keys_is_refused_and_its_keys_are_stripped(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# only a comment\n\n   \n")
    with pytest.raises(ValidationError, match="holds no key"):
        Settings(api_keys_file=keys)
    keys.write_text("  alpha \r\n")
    assert Settings(api_keys_file=keys).api_keys() == ["alpha"]


def test_openapi_declares_the_bearer_scheme_only_when_auth_is_on():
    with client_for(api_key="k") as c:
        schema = c.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearer"]["description"],
    }
    for path in ("/answer", "/batch_answer", "/read"):
        assert schema["paths"][path]["post"]["security"] == [{"bearer": []}], path
    assert "security" not in schema["paths"]["/livez"]["get"]
    with client_for() as c:
        schema = c.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert "security" not in schema["paths"]["/answer"]["post"]


# --------------------------------------------------------------------------- CORS
ORIGIN = "https://app.example"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type, authorization, x-request-id",
}


@pytest.mark.parametrize("path", ["/answer", "/batch_answer", "/read", "/v1/models", "/livez"])
def test_cors_preflight_works_on_every_route_even_with_auth(path):
    with client_for(cors_origins=f"{ORIGIN},http://localhost:3000", api_key="k") as c:
        r = c.options(path, headers=PREFLIGHT)
    assert r.status_code == 200, r.text  # a preflight carries no Authorization header: never a 401
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert {"GET", "POST", "OPTIONS"} <= set(r.headers["access-control-allow-methods"].split(", "))
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "x-request-id"} <= allowed


def test_cors_answers_carry_the_headers_and_expose_request_id_and_retry_after():
    with client_for(cors_origins=[ORIGIN], api_key="k") as c:
        ok = c.post("/answer", json=OK, headers={"origin": ORIGIN, "authorization": "Bearer k"})
        denied = c.post("/answer", json=OK, headers={"origin": ORIGIN})
        refused = c.post("/answer", content=b"x", headers={"origin": ORIGIN, "content-type": "text/plain"})
    for r, status in ((ok, 200), (denied, 401), (refused, 415)):
        assert r.status_code == status
        assert r.headers["access-control-allow-origin"] == ORIGIN  # a browser page can read the error too
        assert set(r.headers["access-control-expose-headers"].split(", ")) == {"x-request-id", "retry-after"}


def test_cors_refuses_other_origins_with_json():
    with client_for(cors_origins=[ORIGIN]) as c:
        r = c.options("/answer", headers={**PREFLIGHT, "origin": "https://evil.example"})
        simple = c.post("/answer", json=OK, headers={"origin": "https://evil.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert "access-control-allow-origin" not in r.headers
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_without_cors_origins_no_cors_headers_and_options_is_as_before(client):
    r = client.options("/answer", headers=PREFLIGHT)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    post = client.post("/answer", json=OK, headers={"origin": ORIGIN})
    for response in (r, post):
        assert not [h for h in response.headers if h.startswith("access-control-")]


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("https://a.example, http://localhost:3000", ["https://a.example", "http://localhost:3000"]),
        ('["https://a.example"]', ["https://a.example"]),
        ("*", ["*"]),
        ("", []),
    ],
)
def test_cors_origins_are_a_json_list_or_comma_separated(monkeypatch, value, origins):
    monkeypatch.setenv("QA_CORS_ORIGINS", value)
    assert Settings().cors_origins == origins


@pytest.mark.parametrize("bad", ["https://a.example/", "a.example", "https://a.example/path", "[1"])
def test_cors_origins_that_can_never_match_are_refused(monkeypatch, bad):
    monkeypatch.setenv("QA_CORS_ORIGINS", bad)
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings()


# --------------------------------------------------------------------------- disconnects and timeouts (ASGI level)
def run_asgi(app, scope: dict, messages: list[dict], stall: bool = False) -> list[dict]:
    """Drive `app` with `messages` as the client's side (then a disconnect, or nothing ever: `stall`)."""
    sent: list[dict] = []

    async def go() -> None:
        queue = list(messages)

        async def receive() -> dict:
            if queue:
                return queue.pop(0)
            if stall:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(go())
    return sent


def http_scope(path: str = "/answer", headers: dict[str, str] | None = None) -> dict:
    hdrs = {"content-type": "application/json", "content-length": "100", **(headers or {})}
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def outcomes(app) -> dict[str, float]:
    found = {}
    for metric in app.state.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                found[sample.labels["outcome"]] = found.get(sample.labels["outcome"], 0) + sample.value
    return found


def test_a_disconnect_at_any_stage_counts_as_499_never_500():
    engine = FakeEngine()
    app = create_app(Settings(max_body_bytes=2048), lambda s, m: engine)
    part = {"type": "http.request", "body": b'{"question": ', "more_body": True}
    # during the upload: Content-Length 100, 13 bytes sent, then gone
    assert run_asgi(app, http_scope(), [part]) == []
    # while a 413's body is being read and dropped
    assert run_asgi(app, http_scope(headers={"content-length": "999999"}), [part]) == []
    # while a 415's body is being read and dropped
    assert run_asgi(app, http_scope(headers={"content-type": "text/plain"}), [part]) == []
    # while waiting for the answer: the route's watcher sees the disconnect
    engine.answer = _raiser(ClientDisconnected("gone"))  # type: ignore[method-assign]
    body = b'{"question": "q", "context": "c"}'
    whole = {"type": "http.request", "body": body, "more_body": False}
    run_asgi(app, http_scope(headers={"content-length": str(len(body))}), [whole])
    assert outcomes(app) == {"499": 4}


def test_a_body_that_does_not_arrive_in_time_is_a_json_408():
    app = create_app(Settings(body_timeout_s=0.2), lambda s, m: FakeEngine())
    part = {"type": "http.request", "body": b'{"question": ', "more_body": True}
    sent = run_asgi(app, http_scope(), [part], stall=True)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"request_timeout"' in sent[1]["body"] and b"QA_BODY_TIMEOUT_S" in sent[1]["body"]
    assert outcomes(app) == {"408": 1}


# --------------------------------------------------------------------------- the error table
def test_every_error_the_handlers_map_is_in_the_error_table():
    for status, code in ERROR_TABLE.values():
        assert ERROR_CODES[code][0] == status, code


def test_every_status_the_service_returns_is_in_the_table():
    statuses = {status for status, _ in ERROR_CODES.values()}
    assert {400, 401, 404, 405, 408, 413, 415, 422, 429, 431, 499, 500, 503, 504} <= statuses


def test_docs_api_errors_section_lists_every_code_of_the_table():
    doc = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Errors") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    rows = {(int(m.group(1)), m.group(2)) for m in re.finditer(r"^\| (\d{3}) \| `(\w+)` \|", section, re.M)}
    assert rows == {(status, code) for code, (status, _) in ERROR_CODES.items()}
