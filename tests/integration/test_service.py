"""The service on real ONNX models (tiny, built in-session): answers, windows, batching, readiness, limits."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.engine.bundle import BundleError
from app.main import create_app
from app.settings import Settings
from tests.support.marker_model import MARKER

FILLER = "이 문장은 정답과 관계가 없는 긴 설명이다. "


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module", params=["fp32", "int8"])
def client(request: pytest.FixtureRequest, marker_bundle: Path):
    settings = Settings(model_dir=marker_bundle, model_variant=request.param, intra_op_threads=1, max_delay_ms=2)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_answer_is_the_marker_with_exact_offsets(client):
    context = f"대한민국의 수도는 {MARKER}이다. 부산은 항구 도시이다."
    r = client.post("/answer", json={"question": "대한민국의 수도는?", "context": context, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    best = body["answers"][0]
    assert best["text"] == MARKER
    assert context[best["start"] : best["end"]] == MARKER
    assert best["start"] == context.index(MARKER)
    for a in body["answers"]:
        assert context[a["start"] : a["end"]] == a["text"]
    assert len({(a["start"], a["end"]) for a in body["answers"]}) == len(body["answers"])
    assert body["model"] == "tiny-marker-bert"


def test_long_korean_context_answer_only_in_last_window(client):
    context = FILLER * 60 + f"마지막 문장에 {MARKER}이 있다."
    r = client.post("/answer", json={"question": "어디에 있나?", "context": context})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows"] > 5
    best = body["answers"][0]
    assert best["text"] == MARKER and best["start"] == context.rindex(MARKER)


def test_batched_equals_single(client):
    items = [
        {"question": "어디?", "context": FILLER * k + f"{MARKER}에서 만나자." + FILLER * (3 - k % 3), "top_k": 5}
        for k in range(0, 12, 2)
    ] + [{"question": "Where?", "context": "Meet me in " + MARKER + " tomorrow.", "top_k": 2}]
    singles = [client.post("/answer", json=it).json() for it in items]
    batched = client.post("/batch_answer", json={"items": items}).json()["results"]
    assert len(batched) == len(items)
    int8 = client.get("/v1/models").json()["data"][0]["precision"] == "int8"
    for one, many in zip(singles, batched, strict=True):
        spans_one = [(a["start"], a["end"], a["text"]) for a in one["answers"]]
        spans_many = [(a["start"], a["end"], a["text"]) for a in many["answers"]]
        if int8:
            # dynamic int8 scales activations per batch tensor, so near-tied runners-up may swap;
            # the answer itself and its score must not move
            assert spans_one[0] == spans_many[0]
            assert one["answers"][0]["score"] == pytest.approx(many["answers"][0]["score"], abs=0.02)
            continue
        assert spans_one == spans_many
        for a, b in zip(one["answers"], many["answers"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_allow_no_answer_reports_null_score(client):
    r = client.post("/answer", json={"question": "q?", "context": FILLER, "allow_no_answer": True})
    assert r.status_code == 200
    assert r.json()["no_answer_score"] is not None


def test_too_many_windows_is_422_naming_the_item(client, marker_bundle):
    huge = FILLER * 2000  # far more than 64 windows of 128 tokens, still under the char limit
    r = client.post("/answer", json={"question": "q?", "context": huge[:29000]})
    assert r.status_code == 422
    assert r.json()["error"]["fields"][0]["field"] == "context"
    # the limit is stated in characters, and it is true: text of this kind that long fits, a little more does not
    message = r.json()["error"]["message"]
    fits = int(re.search(r"at most about ([\d,]+) characters", message).group(1).replace(",", ""))
    assert message.startswith("the passage is too long") and "it has 29,000" in message
    ok = client.post("/answer", json={"question": "q?", "context": huge[: int(fits * 0.97)]})
    assert ok.status_code == 200 and ok.json()["windows"] <= 64
    assert client.post("/answer", json={"question": "q?", "context": huge[: int(fits * 1.05)]}).status_code == 422
    r = client.post(
        "/batch_answer",
        json={"items": [{"question": "q?", "context": "짧다"}, {"question": "q?", "context": huge[:29000]}]},
    )
    assert r.status_code == 422
    assert r.json()["error"]["fields"][0]["field"] == "items.1.context"


def test_models_and_metrics(client):
    info = client.get("/v1/models").json()["data"][0]
    assert info["name"] == "tiny-marker-bert"
    assert info["execution_provider"] == "CPUExecutionProvider"
    assert info["max_seq_length"] == 128 and info["doc_stride"] == 32
    assert info["precision"] in ("fp32", "int8")
    assert info["variant_reason"] and info["max_batch_windows"] == 1  # a CPU runs one window per call
    assert info["score_calibration"] == [1.0, 0.0] and info["null_threshold"] == 0.0  # an uncalibrated bundle
    client.post("/answer", json={"question": "q?", "context": MARKER})
    text = client.get("/metrics").text
    for name in (
        "qa_batch_windows_bucket",
        "qa_batch_tokens_bucket",
        "qa_queue_seconds",
        "qa_inference_seconds",
        "qa_tokenize_seconds",
        'qa_requests_total{endpoint="/answer",outcome="200"}',
    ):
        assert name in text


def test_readiness_before_and_after_load(marker_bundle):
    app = create_app(Settings(model_dir=marker_bundle, intra_op_threads=1))
    c = TestClient(app)
    assert c.get("/readyz").status_code == 503  # lifespan not run: nothing loaded
    assert c.get("/livez").status_code == 200
    r = c.post("/answer", json={"question": "q?", "context": MARKER})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    with c:
        wait_ready(c)
        assert c.get("/readyz").json()["status"] == "ready"


def test_auto_variant_is_int8_on_cpu(marker_bundle):
    with TestClient(create_app(Settings(model_dir=marker_bundle, intra_op_threads=1))) as c:
        wait_ready(c)
        assert c.get("/v1/models").json()["data"][0]["precision"] == "int8"


def test_tampered_bundle_is_refused(marker_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(marker_bundle, copy)
    with (copy / "model.int8.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.int8\.onnx"):
        create_app(Settings(model_dir=copy))
    with pytest.raises(BundleError, match="manifest"):
        create_app(Settings(model_dir=tmp_path))


def test_batch_budget_smaller_than_a_window_is_refused(marker_bundle):
    with pytest.raises(BundleError, match="QA_MAX_BATCH_TOKENS"):
        create_app(Settings(model_dir=marker_bundle, max_batch_tokens=100))


def test_text_that_tokenizes_to_nothing_is_422(client):
    r = client.post("/answer", json={"question": "q?", "context": "\x01\x02\x03"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "context"
    r = client.post(
        "/batch_answer", json={"items": [{"question": "q?", "context": MARKER}, {"question": "\x7f", "context": "x"}]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"][0]["field"] == "items.1.question"


def test_stalled_inference_turns_readiness_and_liveness_off(marker_bundle: Path):
    settings = Settings(model_dir=marker_bundle, intra_op_threads=1, stall_timeout_s=0.3, max_delay_ms=0)
    app = create_app(settings)
    with TestClient(app) as c:
        wait_ready(c)
        engine = app.state.engine
        real_infer, gate = engine.batcher._infer, threading.Event()

        def hung(windows):
            gate.wait(20)
            return real_infer(windows)

        engine.batcher._infer = hung
        worker = threading.Thread(
            target=c.post, args=("/answer",), kwargs={"json": {"question": "q", "context": MARKER}}
        )
        worker.start()
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code == 200:
            assert time.monotonic() < deadline, "stall never reported"
            time.sleep(0.05)
        live = c.get("/livez")
        assert live.status_code == 503 and "stalled" in live.json()["detail"]
        assert "stalled" in c.get("/readyz").json()["detail"]
        gate.set()
        worker.join(20)
        assert c.get("/readyz").status_code == 200 and c.get("/livez").status_code == 200


def test_the_manifest_score_map_reaches_the_scores(marker_bundle: Path, tmp_path: Path):
    """The manifest's score_map is what the service applies: a Platt map on the best span's share (the others
    share the rest), and the null map, P(no answer) = sigmoid(alpha * margin + beta), scaling the answers."""
    bundle = tmp_path / "bundle"
    shutil.copytree(marker_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    request = {
        "question": "대한민국의 수도는?",
        "context": f"대한민국의 수도는 {MARKER}이다. 부산은 항구 도시이다.",
        "top_k": 3,
        "allow_overlap": True,
    }

    def ask(score_map: dict, **options: object) -> dict:
        (bundle / "manifest.json").write_text(json.dumps(manifest | {"score_map": score_map}))
        with TestClient(create_app(Settings(model_dir=bundle, model_variant="fp32", intra_op_threads=1))) as c:
            wait_ready(c)
            assert c.get("/v1/models").json()["data"][0]["score_map"]["kind"] == score_map["kind"]
            return c.post("/answer", json=request | options).json()

    identity = {"kind": "identity", "params": [], "null": [1.0, 0.0]}
    platt = {"kind": "platt", "params": [0.8, 0.3], "null": [1.5, -2.0]}
    raw, cal = ask(identity), ask(platt)
    assert [a["start"] for a in raw["answers"]] == [a["start"] for a in cal["answers"]] and len(raw["answers"]) > 1
    q = [a["score"] for a in raw["answers"]]
    top = 1 / (1 + np.exp(-(0.8 * np.log(q[0] / (1 - q[0])) + 0.3)))
    want = [top] + [min(x * (1 - top) / (1 - q[0]), top) for x in q[1:]]
    assert [a["score"] for a in cal["answers"]] == pytest.approx(want, abs=1e-9)
    # the null answer: with the identity null map P = sigmoid(margin), which gives the margin back
    raw_null = ask(identity, allow_no_answer=True, min_score=0.0)
    cal_null = ask(platt, allow_no_answer=True, min_score=0.0)
    margin = np.log(raw_null["no_answer_score"] / (1 - raw_null["no_answer_score"]))
    p0 = 1 / (1 + np.exp(-(1.5 * margin - 2.0)))
    assert cal_null["no_answer_score"] == pytest.approx(p0, abs=1e-9)
    assert [a["score"] for a in cal_null["answers"]] == pytest.approx([w * (1 - p0) for w in want], abs=1e-9)
