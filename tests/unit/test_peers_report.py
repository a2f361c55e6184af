"""bench/peers.py's report: ratios to the best peer and the markdown table (pure; no timings measured)."""

from __future__ import annotations

from bench.peers import markdown_table, summary, with_ratios


def rows() -> list[dict]:
    return [
        {"name": "transformers", "qps": 2.0, "p50_ms": 500.0, "p99_ms": 600.0},
        {"name": "optimum", "qps": 4.0, "p50_ms": 250.0, "p99_ms": 300.0, "engine": "ort"},
        {"name": "raw ORT", "qps": 6.0, "p50_ms": 160.0, "p99_ms": 170.0, "windows": 7},
        {"name": "service fp32, 16 clients", "qps": 5.0, "p50_ms": 900.0, "p99_ms": 2000.0},
    ]


def test_ratio_is_to_the_best_of_transformers_and_optimum_not_to_raw_ort():
    got = {r["name"]: r["vs_best_peer"] for r in with_ratios(rows())}
    assert got == {"transformers": 0.5, "optimum": 1.0, "raw ORT": 1.5, "service fp32, 16 clients": 1.25}


def test_without_a_peer_row_there_is_no_ratio_and_skipped_rows_have_none():
    only_service = [r for r in rows() if r["name"].startswith("service")]
    assert [r["vs_best_peer"] for r in with_ratios(only_service)] == [None]
    skipped = with_ratios([*rows()[1:], {"name": "transformers", "skipped": "this torch build has no CUDA"}])
    assert skipped[-1]["vs_best_peer"] is None
    assert skipped[0]["vs_best_peer"] == 1.0  # optimum alone is the best peer now


def test_table_has_one_line_per_row_and_says_what_was_skipped():
    table = markdown_table(with_ratios([*rows(), {"name": "transformers", "skipped": "no CUDA"}]))
    lines = table.splitlines()
    assert len(lines) == 2 + 5
    assert lines[0].startswith("| row | q/s | p50 (ms) | p99 (ms) | vs best peer |")
    assert "| raw ORT | 6.00 | 160.0 | 170.0 | 1.50x | 7 windows |" in lines
    assert lines[-1] == "| transformers | n/a | n/a | n/a | n/a | skipped: no CUDA |"


def test_summary_percentiles_and_rate():
    s = summary("x", [0.3, 0.1, 0.2, 0.4], wall=2.0)
    # quantiles interpolate between neighbouring ranks (bench.common.percentile): p99 sits at rank 2.97 of 0..3
    assert (s["questions"], s["qps"], s["p50_ms"], s["p99_ms"]) == (4, 2.0, 250.0, 397.0)
