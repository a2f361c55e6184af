"""bench/resilience.py's reports for the fairness experiments (pure: replies are made up, nothing is timed)."""

from __future__ import annotations

from bench.common import Reply
from bench.resilience import STARVATION_BOUND, mixed_report, starvation_report


def reply(item: int, status: int, seconds: float, started: float = 0.0, windows: int | None = None) -> Reply:
    return Reply(item, status, started, seconds, {} if windows is None else {"windows": windows})


def test_mixed_groups_by_windows_needed_and_counts_the_504s_that_must_not_happen():
    needed = [1, 4, 5]
    replies = [
        reply(0, 200, 0.1, windows=1),
        reply(0, 200, 0.3, windows=1),
        reply(1, 504, 30.0),
        reply(2, 504, 30.0),
        reply(2, 200, 2.0, windows=4),  # the service cut it differently from our count
    ]
    got = mixed_report(replies, needed, wall=10.0)
    assert got["requests"] == 5 and got["throughput_rps"] == 0.5
    assert got["statuses"] == {200: 3, 504: 2}
    assert got["504_needing_at_most_4_windows"] == 1
    assert got["200s_reporting_other_windows"] == 1
    assert list(got["by_windows_needed"]) == ["1", "4", "5"]
    assert got["by_windows_needed"]["1"] == {"n": 2, "statuses": {200: 2}, "p50_ms": 200.0, "p99_ms": 298.0}


def test_starvation_compares_each_run_with_the_idle_median_and_counts_the_clients_meanwhile():
    idle = [0.2, 0.3, 0.25]
    longs = [reply(0, 200, 0.5), reply(0, 200, 0.25 * STARVATION_BOUND + 0.01), reply(0, 504, 30.0)]
    looping = [reply(1, 200, 0.1, started=s) for s in (0.0, 1.0, 1.5, 9.0)]  # ends 0.1, 1.1, 1.6, 9.1
    got = starvation_report(idle, longs, looping, t0=1.0, t1=3.0)
    assert got["idle_median_ms"] == 250.0
    assert [r["x_idle"] for r in got["runs"]] == [2.0, 12.04, 120.0]
    assert got[f"runs_200_within_{STARVATION_BOUND}x_idle"] == 1
    assert got["clients_meanwhile"]["n"] == 2 and got["clients_meanwhile"]["throughput_rps"] == 1.0
