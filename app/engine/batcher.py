"""Cross-request scheduling of windows: fair share, deadlines, admission control, failure isolation."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from app.engine.errors import DeadlineExceeded, InferenceFailed, InputTooLarge, Overloaded, ShuttingDown
from app.engine.windows import padded_width
from app.metrics import Metrics

log = logging.getLogger(__name__)


class Sized(Protocol):
    def __len__(self) -> int: ...


W = TypeVar("W", bound=Sized)
Logits = tuple[np.ndarray, np.ndarray]


class CostModel:
    """Seconds per padded token, as a moving average of measured batches.

    Attention makes the true cost grow faster than linearly with width, but windows are capped at
    max_seq_length, so a per-token rate is within a small factor and errs on the short side.

    The average only moves when batches run, so a burst of CPU contention would leave it inflated on a
    server that has since gone idle, refusing work it could do in time. Between batches it therefore
    decays toward the idle rate (`fastest`), halving its excess every `half_life_s`.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        settle: int = 10,
        half_life_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.alpha = alpha
        self.settle = settle
        self.half_life_s = half_life_s
        self.clock = clock
        self._last = clock()  # when the average last moved
        self.per_token: float | None = None  # unknown until the first batch (warmup measures one)
        # What an idle engine manages: the lowest the moving average has been once `settle` batches were
        # served. Neither one lucky batch nor the warm-up's timing of a lone dummy window counts: both ran
        # 15-25% faster on 2 cores than the windows of a long request do, and an optimistic bound admits
        # requests that can only end in a 504 at their deadline.
        self.fastest: float | None = None
        self.observed = 0

    def observe(self, seconds: float, tokens: int) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        rate = seconds / tokens
        current = self.rate()
        self.per_token = rate if current is None else (1 - self.alpha) * current + self.alpha * rate
        self._last = self.clock()
        self.observed += 1
        if self.fastest is None or self.observed == self.settle + 1:
            self.fastest = self.per_token
        else:
            self.fastest = min(self.fastest, self.per_token)

    def rate(self) -> float | None:
        """Seconds per token now: the moving average, decayed toward the idle rate since it last moved."""
        if self.per_token is None or self.fastest is None or self.per_token <= self.fastest:
            return self.per_token
        idle = max(0.0, self.clock() - self._last)
        return self.fastest + (self.per_token - self.fastest) * 0.5 ** (idle / self.half_life_s)

    def seconds(self, tokens: float) -> float:
        rate = self.rate()
        return 0.0 if rate is None else rate * tokens

    def idle_seconds(self, tokens: float) -> float:
        return 0.0 if self.fastest is None else self.fastest * tokens


@dataclass(eq=False)
class _Job(Generic[W]):
    windows: Sequence[W]
    widths: list[int]  # padded width of each window
    deadline: float
    future: asyncio.Future[list[Logits]]
    enqueued: float
    results: list[Logits | None] = field(default_factory=list)
    next: int = 0  # first window not yet scheduled
    remaining: int = 0  # windows without a result yet
    joined: int = 0  # the round of its first window: the one after the latest round scheduled when it arrived

    @property
    def round(self) -> int:
        """The round its next window belongs to: one window per job per round."""
        return self.joined + self.next

    @property
    def tokens_left(self) -> int:
        return sum(self.widths[self.next :])

    @property
    def unscheduled(self) -> bool:
        return self.next < len(self.windows)


class Batcher(Generic[W]):
    """One asyncio task owns the queue; callers only append and await a future, so no lock is needed.

    Scheduling, one batch at a time so that new arrivals join the very next batch:
    - fair queuing in rounds: every window belongs to a round, each waiting request has one window in
      each round, and no window of round r+1 runs while one of round r waits (ties go to the earliest
      deadline). A newcomer's first window joins the round after the latest one scheduled, never a
      round already under way. So a request of k windows among n others finishes within k rounds of
      at most n+1 windows each, (n+1)*k windows in all, however fast closed-loop clients resubmit: a
      request with 200 windows cannot hold back one with a single window, nor a steady stream of
      single windows starve it (had newcomers joined the current round, the round would never end);
    - a batch stops growing at the window budget, the padded-token budget, or when its estimated
      run time would pass `max_batch_s`, which bounds how long a newcomer waits for a free engine;
    - a request whose next window cannot finish before its deadline is failed at once instead of
      computed for nobody;
    - admission refuses (429) what the queue ahead of it leaves no time for, and refuses (422) what
      could never fit the queue or the deadline at all.
    """

    def __init__(
        self,
        infer: Callable[[list[W]], list[Logits]],
        *,
        max_windows: int,
        max_tokens: int,
        max_delay_s: float,
        max_queue: int,
        max_batch_s: float = math.inf,
        pad_multiple: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self._infer = infer
        self.max_windows = max_windows
        self.max_tokens = max_tokens
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.max_batch_s = max_batch_s
        self.pad_multiple = pad_multiple
        self.metrics = metrics or Metrics()
        self.cost = CostModel()
        self._jobs: list[_Job[W]] = []  # jobs with windows not yet scheduled
        self._queued = 0  # unscheduled windows over all jobs
        self._round = 0  # the latest round a scheduled window belonged to
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy_since: float | None = None
        self._progress = time.monotonic()  # last time a batch finished, or the queue went from empty to busy
        self.closed: str | None = None  # set when draining: new work is refused with this reason
        # one inference thread: ORT parallelizes inside a run; two concurrent runs would fight for cores
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")

    # --- lifecycle ---
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        self.close("server is shutting down")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.fail_all(ShuttingDown("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def close(self, reason: str) -> None:
        """Refuse new work from now on; what is queued carries on."""
        self.closed = reason

    def fail_all(self, error: Exception) -> int:
        """Resolve every waiting request with `error`; returns how many there were."""
        failed = 0
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(error)
                failed += 1
        self._jobs.clear()
        self._queued = 0
        self.metrics.queue_depth.set(0)
        return failed

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the engine has made no progress although work is waiting or running (0 when fine)."""
        now = time.monotonic() if now is None else now
        if self._busy_since is not None:
            return now - self._busy_since
        if self._queued:
            return now - self._progress
        return 0.0

    @property
    def queued_windows(self) -> int:
        return self._queued

    # --- producer side ---
    def submit(
        self, windows: Sequence[W], timeout_s: float, deadline_s: float | None = None
    ) -> asyncio.Future[list[Logits]]:
        """Queue one request's windows; the future resolves to their logits, in order.

        `timeout_s` is what is left of the request's time, `deadline_s` the whole configured deadline
        (default: the same): more work than the whole deadline can never run (422), while more than
        what is left only means the request waited too long before it got here (429).
        Raises at once, queueing nothing, when the request is refused.
        """
        if self.closed is not None:
            raise ShuttingDown(self.closed)
        n = len(windows)
        if n > self.max_queue:
            raise InputTooLarge(
                f"the request needs {n} windows; the queue holds at most {self.max_queue} (QA_MAX_QUEUE_WINDOWS)"
            )
        widths = [padded_width(len(w), self.pad_multiple) for w in windows]
        tokens = sum(widths)
        deadline_s = timeout_s if deadline_s is None else deadline_s
        # "never" is judged at the best rate seen, so a busy moment does not turn a 429 into a 422
        if self.cost.idle_seconds(tokens) > deadline_s:
            raise InputTooLarge(
                f"the request needs about {self.cost.idle_seconds(tokens):.1f}s of model time even on an idle "
                f"server, more than the {deadline_s:g}s deadline (QA_REQUEST_TIMEOUT_S); send fewer or shorter "
                "contexts"
            )
        # an idle engine starts this request at once, at the rate an idle engine runs: an estimate still
        # inflated by a burst that has passed must not refuse it
        idle = not self._jobs and self._busy_since is None
        alone = self.cost.idle_seconds(tokens) if idle else self.cost.seconds(tokens)
        if alone > timeout_s:
            raise Overloaded(
                f"the request needs about {alone:.1f}s of model time and has {timeout_s:.1f}s left",
                retry_after=self._drain_estimate(),
            )
        if self._queued + n > self.max_queue:
            raise Overloaded(
                f"queue holds {self._queued} windows; limit {self.max_queue}",
                retry_after=self._drain_estimate(self._queued + n - self.max_queue),
            )
        expected = alone if idle else self._finish_estimate(tokens)
        if expected > timeout_s:
            raise Overloaded(
                f"the work queued ahead would take about {expected:.1f}s; the deadline is {timeout_s:.1f}s away",
                retry_after=self._wait_estimate(tokens, timeout_s),
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job: _Job[W] = _Job(
            windows, widths, now + timeout_s, loop.create_future(), now, [None] * n, 0, n, self._round + 1
        )
        if not windows:
            job.future.set_result([])
            return job.future
        if not self._queued:
            self._progress = now
        self._jobs.append(job)
        self._queued += n
        self.metrics.queue_depth.set(self._queued)
        self._wake.set()
        return job.future

    def _finish_estimate(self, tokens: int) -> float:
        # Under fair sharing a request finishes after its own tokens plus, from each waiting job,
        # at most as many tokens as it has itself.
        shared = sum(min(job.tokens_left, tokens) for job in self._jobs)
        return self.cost.seconds(shared + tokens)

    def _wait_estimate(self, tokens: int, timeout_s: float) -> float:
        """Seconds until this request, sent again, would be admitted: the work ahead runs in rounds, one window
        of each job per round, until what is left of it, shared fairly, leaves room for this one."""
        left = [list(job.widths[job.next :]) for job in self._jobs]
        done = 0
        while any(left):
            shared = sum(min(sum(widths), tokens) for widths in left)
            if self.cost.seconds(shared + tokens) <= timeout_s:
                break
            for widths in left:
                if widths:
                    done += widths.pop(0)
        return self.cost.seconds(done)

    def _drain_estimate(self, windows: int | None = None) -> float:
        """Seconds until the first `windows` queued windows have run (all of them by default)."""
        widths = sorted((w for job in self._jobs for w in job.widths[job.next :]), reverse=True)
        return self.cost.seconds(sum(widths if windows is None else widths[:windows]))

    # --- consumer side ---
    def _prune(self, now: float) -> None:
        """Drop jobs whose client is gone, and fail those that can no longer meet their deadline."""
        keep: list[_Job[W]] = []
        for job in self._jobs:
            reason = None
            if job.future.done():
                reason = "cancelled"  # client gone, timed out, or an earlier batch of this job failed
            elif now > job.deadline:
                reason = "deadline"
                job.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
            elif now + self.cost.seconds(job.widths[job.next]) > job.deadline:
                # Only the next window is checked: the whole remainder would use a noisy estimate to
                # give up on requests that might still make it. Admission already refused the hopeless.
                reason = "hopeless"
                job.future.set_exception(DeadlineExceeded("its next window cannot finish before the deadline"))
            if reason is None:
                keep.append(job)
            else:
                left = len(job.windows) - job.next
                self._queued -= left
                self.metrics.skipped_windows.labels(reason).inc(left)
        self._jobs = keep
        self.metrics.queue_depth.set(self._queued)

    def _next_batch(self) -> list[tuple[_Job[W], int]]:
        """Fair queuing: window by window, the job whose next window has the lowest round, then deadline."""
        batch: list[tuple[_Job[W], int]] = []
        width = 0
        while True:
            waiting = [j for j in self._jobs if j.unscheduled]
            if not waiting:
                break
            job = min(waiting, key=lambda j: (j.round, j.deadline))
            new_width = max(width, job.widths[job.next])
            size = len(batch) + 1
            if batch and (
                size > self.max_windows
                or new_width * size > self.max_tokens
                or self.cost.seconds(new_width * size) > self.max_batch_s
            ):
                break
            batch.append((job, job.next))
            self._round = max(self._round, job.round)
            job.next += 1
            width = new_width
        self._jobs = [j for j in self._jobs if j.unscheduled]
        self._queued -= len(batch)
        self.metrics.queue_depth.set(self._queued)
        return batch

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._jobs:
                continue
            # give concurrent requests a moment to join, unless a full batch is already waiting
            if self.max_delay_s > 0 and self._queued < self.max_windows:
                await asyncio.sleep(self.max_delay_s)
            try:
                self._prune(time.monotonic())
                batch = self._next_batch()
                if batch:
                    await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # bookkeeping bug: fail what is waiting, keep serving
                log.exception("batcher round failed")
                self.fail_all(InferenceFailed("internal batching error"))
            if self._jobs:
                self._wake.set()

    async def _run(self, batch: list[tuple[_Job[W], int]]) -> None:
        now = time.monotonic()
        windows = [job.windows[i] for job, i in batch]
        for job, i in batch:
            if i == 0:
                self.metrics.queue_seconds.observe(now - job.enqueued)
        width = padded_width(max(len(w) for w in windows), self.pad_multiple)
        self.metrics.batch_windows.observe(len(windows))
        self.metrics.batch_tokens.observe(width * len(windows))
        self._busy_since = now
        t0 = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, windows)
            if len(outputs) != len(windows):
                raise RuntimeError(f"inference returned {len(outputs)} results for {len(windows)} windows")
        except Exception as e:  # only this batch's requests fail
            log.exception("batch of %d windows failed", len(windows))
            self.metrics.batch_failures.labels(type(e).__name__).inc()
            for job, _ in batch:
                if not job.future.done():
                    job.future.set_exception(InferenceFailed(f"inference failed: {type(e).__name__}"))
            return
        finally:
            self._busy_since = None
            self._progress = time.monotonic()
        elapsed = time.perf_counter() - t0
        self.cost.observe(elapsed, width * len(windows))
        self.metrics.inference_seconds.observe(elapsed)
        for (job, i), out in zip(batch, outputs, strict=True):
            if job.future.done():
                continue
            job.results[i] = out
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)  # type: ignore[arg-type]
