"""Batcher: budgets, length sorting, scatter, failure isolation, deadlines, cancellation, overload."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.engine.batcher import Batcher
from app.engine.errors import DeadlineExceeded, InferenceFailed, Overloaded


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
    # windows from different requests shared batches, sorted by length
    assert any(len(batch) == 4 for batch in infer.batches)
    for batch in infer.batches:
        assert [w.n for w in batch] == sorted((w.n for w in batch), reverse=True)
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


async def test_full_queue_is_overloaded():
    b = make(FakeInfer(), max_queue=3)
    with pytest.raises(Overloaded):
        b.submit([Win(1)] * 4, 5)


async def test_stop_fails_waiting_requests():
    infer = FakeInfer()
    b = make(infer)  # never started: nothing consumes the queue
    fut = b.submit([Win(2)], 5)
    await b.stop()
    with pytest.raises(InferenceFailed):
        await fut
