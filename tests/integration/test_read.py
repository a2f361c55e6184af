"""One question over many passages on real ONNX models: equals answering each passage alone and merging."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine.interface import DecodeOptions, QARequest
from app.engine.qa import QAEngine
from app.main import create_app
from app.settings import Settings
from bench.reader_passages import make_cases
from tests.integration.test_service import FILLER, wait_ready
from tests.support.marker_model import MARKER
from tests.support.tiny_model import KORQUAD_DEV


async def ready_engine(settings: Settings) -> QAEngine:
    engine = QAEngine(settings.engine_config())
    await engine.start()
    for _ in range(600):
        if engine.health().ready:
            return engine
        await asyncio.sleep(0.05)
    raise AssertionError(engine.health().detail)


def korquad_passages(n: int) -> list[str]:
    data = json.loads(KORQUAD_DEV.read_text(encoding="utf-8"))["data"]
    paragraphs = [p["context"] for a in data[:3] for p in a["paragraphs"]]
    # one long passage too, so a passage needs several windows
    return [paragraphs[0] + " " + paragraphs[1] + " " + paragraphs[2], *paragraphs[3 : 3 + n - 1]]


async def test_read_equals_each_passage_alone_merged_by_logit(tiny_bundle: Path):
    """The random tiny model gives every span a different logit, so the merged ranking is a real check."""
    engine = await ready_engine(
        Settings(model_dir=tiny_bundle, model_variant="fp32", intra_op_threads=1, max_delay_ms=1)
    )
    try:
        passages = korquad_passages(6)
        question = "이 글에서 가장 중요한 인물은 누구인가?"
        top_k = 20
        every = DecodeOptions(top_k=top_k, allow_overlap=True)  # every candidate, fragments included
        [result] = await engine.answer([QARequest(question, tuple(passages), every)])
        alone = await asyncio.gather(*(engine.answer([QARequest(question, (p,), every)]) for p in passages))
        # with the null answer on one scale: min_score 0 keeps the answers the null answer would hide
        null = DecodeOptions(top_k=top_k, allow_overlap=True, allow_no_answer=True, min_score=0.0)
        [joint] = await engine.answer([QARequest(question, tuple(passages), null)])
    finally:
        await engine.stop()
    assert result.windows == sum(r.windows for [r] in alone) and result.windows > len(passages)
    merged = sorted(
        ((a.logit, i, a.start, a.end, a.text) for i, [r] in enumerate(alone) for a in r.answers),
        key=lambda t: (-t[0], t[1:]),
    )[:top_k]
    got = [(a.logit, a.passage, a.start, a.end, a.text) for a in result.answers]
    assert len(got) == top_k
    # windows batch differently alone and together: fp32 logits may move in the last digits only
    assert [g[1:] for g in got] == [m[1:] for m in merged]
    assert [g[0] for g in got] == pytest.approx([m[0] for m in merged], abs=1e-4)
    assert len({g[1] for g in got}) > 1, "answers should come from several passages"
    for a in result.answers:
        assert passages[a.passage][a.start : a.end] == a.text
    scores = [a.score for a in joint.answers]
    assert [(a.passage, a.start, a.end) for a in joint.answers] == [g[1:4] for g in got]
    assert scores == sorted(scores, reverse=True) and sum(scores) + joint.no_answer_score <= 1 + 1e-9


@pytest.fixture(scope="module")
def client(marker_bundle: Path):
    # budgets large enough that one /read fits one batch: all its windows must run together
    settings = Settings(
        model_dir=marker_bundle,
        model_variant="fp32",
        intra_op_threads=1,
        max_delay_ms=2,
        max_batch_windows=256,
        max_batch_tokens=256 * 128,
        max_windows_per_request=32,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def batch_stats(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    return tuple(float(re.search(rf"^qa_batch_windows_{k} (\S+)$", text, re.M).group(1)) for k in ("sum", "count"))  # type: ignore[return-value]


def test_gold_passage_wins_among_korquad_distractors(client):
    """KorQuAD test questions, each with its paragraph (the marker at the answer) among 10 other test paragraphs."""
    data = json.loads(KORQUAD_DEV.read_text(encoding="utf-8"))["data"]
    cases = make_cases(data, 6, 10, seed=3)
    for case in cases:
        passages = [p.replace(MARKER, "서 울") for p in case.passages]  # only the gold answer holds the marker
        answer = case.answers[0].replace(MARKER, "서 울")
        passages[case.gold] = passages[case.gold].replace(answer, f"{MARKER} {answer}", 1)
        before = batch_stats(client)
        r = client.post("/read", json={"question": case.question, "passages": passages, "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        best = body["answers"][0]
        assert (best["passage"], best["text"]) == (case.gold, MARKER)
        assert best["start"] == passages[case.gold].index(MARKER)
        for a in body["answers"]:
            assert passages[a["passage"]][a["start"] : a["end"]] == a["text"]
        after = batch_stats(client)
        # every window of every passage ran in one batch
        assert (after[0] - before[0], after[1] - before[1]) == (body["windows"], 1)
        assert body["windows"] >= len(passages)


def test_read_no_answer_covers_all_passages(client):
    passages = [FILLER, FILLER + f"{MARKER}에서 보자.", FILLER * 2]
    r = client.post("/read", json={"question": "어디?", "passages": passages, "allow_no_answer": True})
    body = r.json()
    assert r.status_code == 200 and body["answers"][0]["passage"] == 1
    assert 0 < body["no_answer_score"] < body["answers"][0]["score"]


def test_read_limits_name_the_passage(client):
    long = FILLER * 200  # far more than 32 windows of 128 tokens
    r = client.post("/read", json={"question": "q?", "passages": [MARKER, long[:20000]]})
    assert r.status_code == 422
    err = r.json()["error"]
    assert (err["code"], err["fields"][0]["field"]) == ("input_too_large", "passages.1")
    assert err["message"].startswith("passage 2 is too long: at most about ")
    r = client.post("/read", json={"question": "q?", "passages": [MARKER, MARKER, "\x01\x02"]})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "passages.2"
    r = client.post("/read", json={"question": "\x7f", "passages": [MARKER]})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "question"


def test_read_that_could_never_be_queued_is_422_naming_passages(marker_bundle):
    settings = Settings(
        model_dir=marker_bundle, intra_op_threads=1, max_windows_per_request=16, max_queue_windows=24, warmup=False
    )
    passage = FILLER * 20  # several windows of 128 tokens, under the per-passage limit
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        one = c.post("/answer", json={"question": "q?", "context": passage}).json()["windows"]
        assert 1 < one <= 16
        n = 24 // one + 1
        r = c.post("/read", json={"question": "q?", "passages": [passage] * n})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["code"], err["fields"][0]["field"]) == ("input_too_large", "passages")
        assert "QA_MAX_QUEUE_WINDOWS" in err["message"]
        assert c.post("/read", json={"question": "q?", "passages": [passage] * (24 // one)}).status_code == 200
