"""Batcher: budgets, fair share, scatter, failure isolation, deadlines, cancellation, admission, drain."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.engine.batcher import Batcher, CostModel
from app.engine.errors import DeadlineExceeded, InferenceFailed, InputTooLarge, Overloaded, ShuttingDown
from app.engine.runtime import HeapTrimmer


class Win:
    def __init__(self, n: int, tag: str = "") -> None:
        self.n = n
        self.tag = tag

    def __len__(self) -> int:
        return self.n


class FakeInfer:
    """Logits encode the window length, so scatter mistakes show; `poison` windows make the batch raise."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[Win]] = []
        self.delay_s = delay_s
        self.gate: threading.Event | None = None

    def __call__(self, windows: list[Win]):
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(windows))
        if any(w.tag == "poison" for w in windows):
            raise RuntimeError("bad batch")
        return [(np.full(w.n, w.n, np.float32), np.full(w.n, -w.n, np.float32)) for w in windows]


def make(infer, **kw) -> Batcher:
    args = {"max_windows": 4, "max_tokens": 1000, "max_delay_s": 0.01, "max_queue": 100}
    args.update(kw)
    return Batcher(infer, **args)


async def test_results_scatter_back_in_order():
    infer = FakeInfer()
    b = make(infer)
    b.start()
    futs = [b.submit([Win(n) for n in sizes], 5) for sizes in ([3, 9, 5], [7], [2, 2, 11, 4, 6])]
    results = await asyncio.gather(*futs)
    for sizes, res in zip(([3, 9, 5], [7], [2, 2, 11, 4, 6]), results, strict=True):
        assert [int(s[0]) for s, _ in res] == sizes
        assert [len(s) for s, _ in res] == sizes
    assert all(len(batch) <= 4 for batch in infer.batches)
    # windows from different requests share batches: one window of each request per pass
    assert [w.n for w in infer.batches[0]] == [3, 7, 2, 9]
    await b.stop()


async def test_token_budget_bounds_padded_size():
    infer = FakeInfer()
    b = make(infer, max_windows=32, max_tokens=64, pad_multiple=8)
    b.start()
    await b.submit([Win(n) for n in (30, 30, 20, 9, 8, 8, 1)], 5)
    for batch in infer.batches:
        width = -(-max(w.n for w in batch) // 8) * 8
        assert width * len(batch) <= 64
    await b.stop()


async def test_failing_batch_fails_only_its_requests_and_batcher_survives():
    infer = FakeInfer()
    b = make(infer, max_windows=1)
    b.start()
    good = b.submit([Win(5)], 5)
    bad = b.submit([Win(6, "poison")], 5)
    with pytest.raises(InferenceFailed):
        await bad
    assert len(await good) == 1
    assert b.alive
    later = await b.submit([Win(4)], 5)
    assert int(later[0][0][0]) == 4
    await b.stop()


async def test_cancelled_requests_are_skipped():
    infer = FakeInfer()
    infer.gate = threading.Event()
    b = make(infer, max_windows=1, max_delay_s=0)
    b.start()
    first = b.submit([Win(3)], 5)
    await asyncio.sleep(0.05)  # first is now blocked inside inference
    gone = b.submit([Win(8, "gone")], 5)
    gone.cancel()
    kept = b.submit([Win(4)], 5)
    infer.gate.set()
    await first
    await kept
    assert all(w.tag != "gone" for batch in infer.batches for w in batch)
    await b.stop()


async def test_expired_requests_get_deadline_error():
    infer = FakeInfer()
    infer.gate = threading.Event()
    b = make(infer, max_windows=1, max_delay_s=0)
    b.start()
    first = b.submit([Win(3)], 5)
    await asyncio.sleep(0.05)
    late = b.submit([Win(9, "late")], 0.01)
    await asyncio.sleep(0.05)
    infer.gate.set()
    await first
    with pytest.raises(DeadlineExceeded):
        await late
    assert all(w.tag != "late" for batch in infer.batches for w in batch)
    await b.stop()


async def test_full_queue_is_overloaded_and_a_request_that_never_fits_is_too_large():
    b = make(FakeInfer(), max_queue=3)  # never started: the queue stays as filled
    with pytest.raises(InputTooLarge, match="QA_MAX_QUEUE_WINDOWS"):
        b.submit([Win(1)] * 4, 5)
    b.submit([Win(1)] * 2, 5)
    with pytest.raises(Overloaded):
        b.submit([Win(1)] * 2, 5)
    assert b.queued_windows == 2  # refused requests leave nothing queued


async def test_stop_fails_waiting_requests():
    infer = FakeInfer()
    b = make(infer)  # never started: nothing consumes the queue
    fut = b.submit([Win(2)], 5)
    await b.stop()
    with pytest.raises(ShuttingDown):
        await fut


async def test_small_request_is_not_stuck_behind_a_big_one():
    infer = FakeInfer(delay_s=0)
    infer.gate = threading.Event()
    b = make(infer, max_windows=2, max_delay_s=0)
    b.start()
    big = b.submit([Win(8, "big")] * 40, 30)
    await asyncio.sleep(0.05)  # the first batch of the big request is running
    small = b.submit([Win(3, "small")], 30)
    infer.gate.set()
    await small
    done_at = next(i for i, batch in enumerate(infer.batches) if any(w.tag == "small" for w in batch))
    assert done_at == 1  # the very next batch, not after the other 39 windows
    assert len(await big) == 40
    await b.stop()


async def test_earliest_deadline_goes_first():
    infer = FakeInfer()
    b = make(infer, max_windows=1, max_delay_s=0)  # not started yet: both wait in the queue
    late = b.submit([Win(2, "late")], 30)
    soon = b.submit([Win(2, "soon")], 5)
    b.start()
    await asyncio.gather(late, soon)
    assert [batch[0].tag for batch in infer.batches] == ["soon", "late"]
    await b.stop()


async def test_requests_that_cannot_meet_their_deadline_are_refused_or_dropped():
    infer = FakeInfer()
    b = make(infer, max_windows=1, max_delay_s=0, max_queue=1000)
    b.cost.observe(1.0, 10)  # 0.1 s per token
    with pytest.raises(InputTooLarge, match="deadline"):
        b.submit([Win(10)] * 6, 5)  # 6 s of work alone, deadline 5 s: can never finish
    first = b.submit([Win(10)] * 4, 5)  # 4 s
    with pytest.raises(Overloaded) as refused:
        b.submit([Win(10)] * 3, 5)  # 3 s of its own + 3 s of fair share behind `first`
    # Retry-After is the real wait: after two of first's windows, 2 s of it are left to share, and 2 + 3 fits 5 s
    assert refused.value.retry_after == pytest.approx(2.0)
    # work that fits the whole deadline but not what is left of it waited too long elsewhere: 429, not 422
    with pytest.raises(Overloaded, match="left"):
        b.submit([Win(10)] * 2, 1.5, 5)
    assert b.queued_windows == 4
    # a busy spell slows the measured rate: what an idle engine could do in time is then a 429, not a 422
    b.cost.observe(1000.0, 10)
    with pytest.raises(Overloaded):
        b.submit([Win(10)] * 4, 5)
    # and a queued request whose next window no longer fits its deadline is failed, not computed
    b.start()
    with pytest.raises(DeadlineExceeded, match="cannot finish before the deadline"):
        await first
    assert infer.batches == []
    await b.stop()


def test_idle_bound_forgets_a_fast_warmup_once_batches_are_served_and_keeps_their_best_stretch():
    cost = CostModel(alpha=0.2, settle=10)
    cost.observe(0.5, 10)  # the warm-up: 0.05 s per token, faster than serving will be
    assert cost.idle_seconds(100) == pytest.approx(5.0)
    for _ in range(10):
        cost.observe(1.0, 10)  # served: 0.1 s per token
    settled = cost.idle_seconds(100)
    assert 9.0 < settled <= 10.0  # the warm-up's weight has faded, and the bound starts from there
    cost.observe(0.2, 10)  # one lucky batch at 0.02 s per token lowers it by the average's share only
    lucky = cost.idle_seconds(100)
    assert 0.8 * settled < lucky < settled
    for _ in range(30):
        cost.observe(3.0, 10)  # a busy spell does not raise it
    assert cost.idle_seconds(100) == pytest.approx(lucky)


async def test_batch_stops_growing_at_the_time_budget():
    infer = FakeInfer()
    b = make(infer, max_windows=32, max_delay_s=0, max_batch_s=0.35)
    b.cost.observe(1.0, 100)  # 0.01 s per token: 10-token windows cost 0.1 s each
    b.submit([Win(10)] * 7, 30)
    b.start()
    while b.queued_windows:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # the first batch is cut by the estimate; later ones by the (much faster) measured fake
    assert len(infer.batches[0]) == 3
    await b.stop()


async def test_stall_is_reported_while_inference_hangs():
    infer = FakeInfer()
    infer.gate = threading.Event()
    b = make(infer, max_delay_s=0)
    b.start()
    assert b.stalled_for() == 0.0
    fut = b.submit([Win(3)], 5)
    await asyncio.sleep(0.1)
    assert b.stalled_for() >= 0.05
    infer.gate.set()
    await fut
    assert b.stalled_for() == 0.0
    await b.stop()


async def test_closed_batcher_refuses_new_work_and_fail_all_answers_the_rest():
    b = make(FakeInfer())
    waiting = b.submit([Win(2)], 5)
    b.close("draining")
    with pytest.raises(ShuttingDown):
        b.submit([Win(2)], 5)
    assert b.fail_all(ShuttingDown("bye")) == 1
    with pytest.raises(ShuttingDown):
        await waiting


async def test_newcomer_joins_the_next_round_and_waits_one_window_at_most():
    infer = FakeInfer()
    infer.gate = threading.Event()
    b = make(infer, max_windows=1, max_delay_s=0)
    b.start()
    big = b.submit([Win(8, "big")] * 10, 30)
    await asyncio.sleep(0.05)  # big's first window (its round) is running
    small = b.submit([Win(3, "small")], 30)  # joins the next round, where big's second window ranks first
    infer.gate.set()
    await small
    assert [w.tag for batch in infer.batches[:3] for w in batch] == ["big", "big", "small"]
    assert len(await big) == 10
    await b.stop()


@pytest.mark.parametrize(("clients", "k"), [(8, 5), (3, 12), (16, 2)])
async def test_a_long_request_among_looping_one_window_clients_finishes_within_its_fair_share(clients, k):
    """The bound the docstring promises: k rounds of at most n+1 windows. With newcomers joining the current
    round, the closed-loop clients below kept the round from ever ending and the long request never finished."""
    infer = FakeInfer()
    b = make(infer, max_windows=1, max_delay_s=0, max_queue=1000)
    b.start()
    stop = False

    async def client(i: int) -> None:
        while not stop:
            await b.submit([Win(4, f"c{i}")], 30)

    loops = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(0.02)  # the clients are looping
    before = len(infer.batches)
    await asyncio.wait_for(b.submit([Win(4, "long")] * k, 30), 10)
    ran = len(infer.batches) - before
    stop = True
    await asyncio.gather(*loops)
    assert sum(w.tag == "long" for batch in infer.batches for w in batch) == k
    assert ran <= (clients + 1) * k + 1  # +1: the window already running when it arrived
    await b.stop()


def test_heap_trimmer_trims_after_large_batches_at_most_once_a_second():

    trimmer = HeapTrimmer(min_tokens=385)
    calls: list[int] = []
    trimmer._trim = calls.append  # type: ignore[assignment]
    trimmer.after_batch(384)  # one window: nothing worth handing back
    trimmer.after_batch(768)
    trimmer.after_batch(768)  # within the interval
    assert calls == [0]


async def test_rounds_interleave_requests_and_newcomers_join_the_next_round():
    infer = FakeInfer()
    infer.gate = threading.Event()
    b = make(infer, max_windows=1, max_delay_s=0)
    a = b.submit([Win(4, "a")] * 3, 30)
    c = b.submit([Win(4, "b")] * 3, 30)
    b.start()
    await asyncio.sleep(0.05)  # a's first window is running
    late = b.submit([Win(4, "new")], 30)
    infer.gate.set()
    await asyncio.gather(a, c, late)
    assert [batch[0].tag for batch in infer.batches] == ["a", "b", "a", "b", "new", "a", "b"]
    await b.stop()


def test_an_inflated_estimate_decays_toward_the_idle_rate():
    now = [0.0]
    cost = CostModel(alpha=0.5, settle=0, half_life_s=5.0, clock=lambda: now[0])
    cost.observe(1.0, 10)  # 0.1 s per token: the idle rate
    cost.observe(9.0, 10)  # a burst of contention: the average jumps to 0.5 s per token
    assert cost.seconds(10) == pytest.approx(5.0)
    now[0] = 5.0
    assert cost.seconds(10) == pytest.approx(1.0 + 4.0 / 2)  # half the excess is gone after one half-life
    now[0] = 60.0
    assert cost.seconds(10) == pytest.approx(1.0, abs=0.01)
    assert cost.idle_seconds(10) == pytest.approx(1.0)


async def test_an_idle_server_admits_what_it_can_finish_whatever_the_last_burst_measured():
    infer = FakeInfer()
    b = make(infer, max_windows=1, max_delay_s=0, max_queue=1000)
    for _ in range(12):
        b.cost.observe(1.0, 100)  # settled at 0.01 s per token
    for _ in range(5):
        b.cost.observe(20.0, 100)  # then a burst: 0.2 s per token, for now
    assert b.cost.seconds(1000) > 30
    # 1000 tokens take 10 s at the idle rate: an idle engine starts at once, so it fits a 30 s deadline
    fut = b.submit([Win(100)] * 10, 30)
    # behind it the queue is real: the burst's rate applies, and Retry-After is the wait for the work ahead
    with pytest.raises(Overloaded) as refused:
        b.submit([Win(100)] * 10, 12)
    assert refused.value.retry_after > 0
    fut.cancel()
