"""qa_client against a real uvicorn process serving the marker model (its answer is always the marker token)."""

from __future__ import annotations

import pytest
from qa_client import AnswerItem, AsyncQAClient, InvalidRequest, Passage, QAClient, Unauthorized

from tests.client.conftest import Server
from tests.support.marker_model import MARKER

# long enough to need several windows; the marker is only in the last one
CONTEXT = "긴 문장. " * 80 + f"정답은 {MARKER}이다."


def test_answer(qa_server: Server):
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        result = qa.answer("정답은?", CONTEXT)
    best = result.best
    assert best is not None and best.text == MARKER
    assert CONTEXT[best.start : best.end] == MARKER and best.start == CONTEXT.rindex(MARKER)
    assert result.model == "tiny-marker-bert" and result.windows is not None and result.windows > 1
    assert result.no_answer_score is None


async def test_async_answer_and_batch(qa_server: Server):
    async with AsyncQAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        result = await qa.answer("정답은?", CONTEXT, top_k=2, allow_no_answer=False)
        batch = await qa.batch_answer([{"question": "q", "context": f"{MARKER}이다"}])
    assert result.best is not None and result.best.text == MARKER
    assert [r.best.text if r.best else None for r in batch] == [MARKER]


def test_batch_answer_keeps_the_order(qa_server: Server):
    contexts = [f"{MARKER}은 수도다.", f"한국의 수도는 {MARKER}이다.", "아무 말. " * 30 + MARKER]
    items = [
        {"question": "수도는?", "context": contexts[0]},
        AnswerItem("수도는?", contexts[1], top_k=2),
        AnswerItem("어디?", contexts[2], max_answer_length=5),
    ]
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        results = qa.batch_answer(items)
    assert [(r.best.start if r.best else None) for r in results] == [c.index(MARKER) for c in contexts]


def test_read_with_plain_strings(qa_server: Server):
    passages = ["에펠탑은 파리에 있다.", f"한국의 수도는 {MARKER}이다.", "The Eiffel Tower is in Paris."]
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        result = qa.read("한국의 수도는?", passages, top_k=3)
    best = result.best
    assert best is not None and (best.passage, best.text) == (1, MARKER)
    assert passages[1][best.start : best.end] == MARKER
    assert best.id is None and best.snippet is None  # plain strings, and no return_context asked
    assert result.windows == 3


def test_read_with_ids_titles_and_snippets(qa_server: Server):
    passages = [
        Passage("에펠탑은 파리에 있다.", id="doc-1"),
        Passage("긴 문장. " * 30 + f"한국의 수도는 {MARKER}이다. " + "뒤 문장. " * 30, id="doc-7", title="수도"),
        {"id": "doc-9", "text": "아무 관련 없는 글.", "meta": {"rank": 3}},
    ]
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        result = qa.read("한국의 수도는?", passages, top_k=1, return_context=True)
    best = result.best
    assert best is not None and (best.passage, best.id, best.title, best.text) == (1, "doc-7", "수도", MARKER)
    assert best.snippet is not None and best.snippet.text[best.snippet.start : best.snippet.end] == MARKER
    assert len(best.snippet.text) < len(passages[1].text)


def test_an_invalid_request_is_an_error_with_code_fields_and_our_request_id(qa_server: Server):
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa, pytest.raises(InvalidRequest) as caught:
        qa.answer("  ", "x", top_k=0, request_id="client-test-422")
    e = caught.value
    assert (e.status, e.code, e.request_id) == (422, "invalid_request", "client-test-422")
    assert {f.field for f in e.fields} == {"question", "top_k"}
    assert "must not be empty" in e.message


def test_api_key(qa_server: Server):
    with QAClient(qa_server.url) as anonymous:
        with pytest.raises(Unauthorized) as caught:
            anonymous.answer("q", MARKER)
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        assert caught.value.request_id  # every error carries the call's id
        # probes never need the key
        assert anonymous.health() and anonymous.ready()
    with QAClient(qa_server.url, api_key="wrong") as wrong, pytest.raises(Unauthorized):
        wrong.models()
    with QAClient(qa_server.url, api_key=qa_server.api_key) as qa:
        [info] = qa.models()["data"]
    assert info["name"] == "tiny-marker-bert"
