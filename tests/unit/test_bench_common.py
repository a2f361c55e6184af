"""bench/common.py: quantiles, /metrics samples, the closed-loop clients and the test-split items (no server, no
model: a fake transport answers the clients, and /metrics text comes from the app's own Metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from app.metrics import Metrics
from bench.common import (
    Reply,
    closed_loop,
    describe,
    held_out_paragraphs,
    histogram,
    joined_paragraphs,
    latency_ms,
    load_items,
    metric,
    metric_by,
    percentile,
    requests_of,
    until,
)


def test_percentile_is_the_median_at_half_and_interpolates_between_ranks():
    assert percentile([0.3, 0.1, 0.2, 0.4], 0.5) == pytest.approx(0.25)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    assert percentile([5.0, 1.0], 0.0) == 1.0
    assert percentile([5.0, 1.0], 1.0) == 5.0
    assert percentile([7.0], 0.99) == 7.0


def test_latency_ms_names_each_quantile_and_is_none_without_values():
    assert latency_ms([0.010, 0.020, 0.030], (0.5, 0.9, 0.99, 1.0)) == {
        "p50_ms": 20.0,
        "p90_ms": 28.0,
        "p99_ms": 29.8,
        "max_ms": 30.0,
    }
    assert latency_ms([]) == {"p50_ms": None, "p99_ms": None}


def metrics_page() -> str:
    m = Metrics()
    m.batch_windows.observe(1)
    m.batch_windows.observe(3)
    m.requests.labels(endpoint="/answer", outcome="200").inc(2)
    m.requests.labels(endpoint="/answer", outcome="504").inc()
    m.requests.labels(endpoint="/readyz", outcome="200").inc()
    m.request_seconds.labels(endpoint="/answer").observe(0.5)
    return generate_latest(m.registry).decode()


def test_metrics_samples_histograms_and_labels():
    page = metrics_page()
    assert histogram(page, "qa_batch_windows") == (4.0, 2.0)
    assert metric(page, "qa_queue_windows") == 0.0
    assert metric(page, "qa_requests_total", endpoint="/answer") == 3.0  # summed over the outcomes
    assert metric(page, "qa_requests_total", outcome="200") == 3.0  # summed over the endpoints
    assert metric_by(page, "qa_requests_total", "outcome", endpoint="/answer") == {"200": 2.0, "504": 1.0}
    assert histogram(page, "qa_request_duration_seconds", endpoint="/answer") == (0.5, 1.0)
    assert metric_by(page, "qa_request_duration_seconds_sum", "endpoint") == {"/answer": 0.5}


def test_a_missing_sample_is_an_error_and_a_missing_label_value_an_empty_dict():
    page = metrics_page()
    with pytest.raises(KeyError, match="qa_renamed_sum"):
        metric(page, "qa_renamed_sum")
    with pytest.raises(KeyError):
        metric(page, "qa_requests_total", endpoint="/read")
    assert metric_by(page, "qa_requests_total", "outcome", endpoint="/read") == {}


def fake_service(seen: list[dict]) -> httpx.AsyncClient:
    """Answers {"windows": n} for a context of n words; 429 for the context "busy"; a reset for "reset"."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if body["context"] == "reset":
            raise httpx.ConnectError("reset", request=request)
        if body["context"] == "busy":
            return httpx.Response(429, json={"error": {"code": "overloaded"}})
        return httpx.Response(200, json={"windows": len(body["context"].split())})

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://fake")


BODIES = [{"question": "q", "context": c} for c in ("a", "a b", "busy", "reset")]


async def test_requests_of_sends_exactly_n_cycling_through_the_bodies_and_records_every_reply():
    seen: list[dict] = []
    paused: list[int] = []

    def pause(r: Reply) -> float:
        paused.append(r.status)
        return 0.001 * (r.status == 429)  # a client that backs off after a 429

    async with fake_service(seen) as http:
        replies = await closed_loop(http, 3, BODIES, requests_of(10, len(BODIES)), pause=pause)
    assert len(seen) == len(replies) == len(paused) == 10
    assert sorted(r.item for r in replies) == sorted(i % 4 for i in range(10))
    by_item = {r.item: r for r in replies}
    assert by_item[1].status == 200 and by_item[1].body == {"windows": 2}
    assert by_item[2].status == 429
    assert by_item[3].status == 0 and by_item[3].body == {"error": "ConnectError"}  # no response: status 0
    assert all(r.seconds >= 0 and r.ended >= r.started for r in replies)
    assert describe(replies)["statuses"] == {0: 2, 200: 6, 429: 2}


async def test_until_stops_every_client_and_replies_can_be_watched_as_they_arrive():
    seen: list[dict] = []
    watched: list[Reply] = []
    async with fake_service(seen) as http:
        got = await closed_loop(http, 2, BODIES[:2], until(lambda: len(watched) >= 7, 2), replies=watched)
    assert got is watched
    assert 7 <= len(watched) <= 8  # the other client may have sent one more before it saw the stop


def squad_file(tmp_path: Path) -> Path:
    """140 articles, one paragraph each with two questions: the test split is articles 112-139."""
    data = [
        {"title": f"t{a}", "paragraphs": [{"context": f"c{a}", "qas": [{"question": f"q{a}"}, {"question": f"r{a}"}]}]}
        for a in range(140)
    ]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    return path


def test_items_and_joined_paragraphs_come_from_the_test_articles(tmp_path: Path):
    path = squad_file(tmp_path)
    items = load_items(path)
    assert len(items) == 2 * 28 and items[0] == {"question": "q112", "context": "c112"}
    assert [p["context"] for p in held_out_paragraphs(path)][:2] == ["c112", "c113"]
    assert joined_paragraphs(path, 2, 3) == [
        {"question": "q114", "context": "c112 c113 c114"},  # the last paragraph's first question
        {"question": "q115", "context": "c113 c114 c115"},
    ]
