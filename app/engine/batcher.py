"""Cross-request dynamic batching of windows: token budget, delay, length sort, deadlines, failure isolation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from app.engine.errors import DeadlineExceeded, InferenceFailed, Overloaded
from app.engine.windows import padded_width
from app.metrics import Metrics

log = logging.getLogger(__name__)


class Sized(Protocol):
    def __len__(self) -> int: ...


W = TypeVar("W", bound=Sized)
Logits = tuple[np.ndarray, np.ndarray]


@dataclass(eq=False)
class _Job(Generic[W]):
    windows: Sequence[W]
    deadline: float
    future: asyncio.Future[list[Logits]]
    enqueued: float
    results: list[Logits | None] = field(default_factory=list)
    remaining: int = 0

    def dead(self, now: float) -> str | None:
        if self.future.done():
            return "cancelled"  # client gone, or an earlier batch of this job failed
        if now > self.deadline:
            return "deadline"
        return None


class Batcher(Generic[W]):
    """One asyncio task owns the queue; callers only append and await a future, so no lock is needed.

    Each round drains what is waiting, sorts it by length so windows of similar length share a batch
    (little padding), and cuts batches under the window and padded-token budgets. Everything drained
    in a round is served in that round, so sorting never starves a request.
    """

    def __init__(
        self,
        infer: Callable[[list[W]], list[Logits]],
        *,
        max_windows: int,
        max_tokens: int,
        max_delay_s: float,
        max_queue: int,
        pad_multiple: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self._infer = infer
        self.max_windows = max_windows
        self.max_tokens = max_tokens
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.pad_multiple = pad_multiple
        self.metrics = metrics or Metrics()
        self._queue: deque[tuple[_Job[W], int]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # one inference thread: ORT parallelizes inside a run; two concurrent runs would fight for cores
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")

    # --- lifecycle ---
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for job, _ in self._queue:
            if not job.future.done():
                job.future.set_exception(InferenceFailed("server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- producer side ---
    def submit(self, windows: Sequence[W], timeout_s: float) -> asyncio.Future[list[Logits]]:
        """Queue one request's windows; the future resolves to their logits, in order."""
        if len(self._queue) + len(windows) > self.max_queue:
            raise Overloaded(f"queue holds {len(self._queue)} windows; limit {self.max_queue}")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job: _Job[W] = _Job(windows, now + timeout_s, loop.create_future(), now, [None] * len(windows), len(windows))
        if not windows:
            job.future.set_result([])
            return job.future
        self._queue.extend((job, i) for i in range(len(windows)))
        self.metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        return job.future

    # --- consumer side ---
    def _plan(self, items: list[tuple[_Job[W], int]]) -> list[list[tuple[_Job[W], int]]]:
        items.sort(key=lambda it: len(it[0].windows[it[1]]), reverse=True)
        batches: list[list[tuple[_Job[W], int]]] = []
        current: list[tuple[_Job[W], int]] = []
        width = 0
        for it in items:
            w = padded_width(len(it[0].windows[it[1]]), self.pad_multiple)
            new_width = max(width, w)
            if current and (len(current) + 1 > self.max_windows or new_width * (len(current) + 1) > self.max_tokens):
                batches.append(current)
                current, new_width = [], w
            current.append(it)
            width = new_width
        if current:
            batches.append(current)
        return batches

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            # give concurrent requests a moment to join, unless a full batch is already waiting
            if self.max_delay_s > 0 and len(self._queue) < self.max_windows:
                await asyncio.sleep(self.max_delay_s)
            items = list(self._queue)
            self._queue.clear()
            self.metrics.queue_depth.set(0)
            try:
                for batch in self._plan(items):
                    await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # bookkeeping bug: fail what was drained, keep serving
                log.exception("batcher round failed")
                for job, _ in items:
                    if not job.future.done():
                        job.future.set_exception(InferenceFailed("internal batching error"))
            if self._queue:
                self._wake.set()

    async def _run(self, batch: list[tuple[_Job[W], int]]) -> None:
        now = time.monotonic()
        live: list[tuple[_Job[W], int]] = []
        for job, i in batch:
            reason = job.dead(now)
            if reason is None:
                live.append((job, i))
                continue
            self.metrics.skipped_windows.labels(reason).inc()
            if reason == "deadline" and not job.future.done():
                job.future.set_exception(DeadlineExceeded("request deadline passed while queued"))
        if not live:
            return
        windows = [job.windows[i] for job, i in live]
        for job, _ in live:
            self.metrics.queue_seconds.observe(now - job.enqueued)
        width = padded_width(max(len(w) for w in windows), self.pad_multiple)
        self.metrics.batch_windows.observe(len(windows))
        self.metrics.batch_tokens.observe(width * len(windows))
        t0 = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, windows)
            if len(outputs) != len(windows):
                raise RuntimeError(f"inference returned {len(outputs)} results for {len(windows)} windows")
        except Exception as e:  # only this batch's requests fail
            log.exception("batch of %d windows failed", len(windows))
            self.metrics.batch_failures.labels(type(e).__name__).inc()
            for job, _ in live:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed(f"inference failed: {type(e).__name__}"))
            return
        self.metrics.inference_seconds.observe(time.perf_counter() - t0)
        for (job, i), out in zip(live, outputs, strict=True):
            if job.future.done():
                continue
            job.results[i] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)  # type: ignore[arg-type]
