"""The service's engine: a ServedModel behind the batcher, with admission, deadlines and draining."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from app.engine.batcher import Batcher
from app.engine.bundle import BundleError
from app.engine.config import EngineConfig
from app.engine.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InputTooLarge,
    InvalidInput,
    NotReady,
    ShuttingDown,
    Where,
)
from app.engine.hardware import REPORTED
from app.engine.interface import Health, QARequest, QAResult
from app.engine.served import PAD_MULTIPLE, ServedModel, first_line
from app.engine.spans import PassageLogits
from app.engine.windows import NoTokens, Window
from app.metrics import Metrics

log = logging.getLogger(__name__)

# Requests still waiting this long before uvicorn's graceful timeout get a JSON 503, before uvicorn would
# cancel them into plain-text 500s.
DRAIN_MARGIN_S = 1.0


class QAEngine:
    """A ServedModel (verified at construction, loaded and warmed up by `load`) answering through the batcher."""

    def __init__(self, config: EngineConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.model = ServedModel(self.config.model)  # fails fast on a bundle that does not match its manifest
        L = self.model.manifest.max_seq_length
        if self.config.max_batch_tokens < L:
            raise BundleError(
                f"QA_MAX_BATCH_TOKENS={self.config.max_batch_tokens} is smaller than one full window "
                f"({L} tokens): such a window could never be batched"
            )
        self.manifest = self.model.manifest
        self.variant = self.model.variant
        self.batcher: Batcher[Window] | None = None
        self._window_s: float | None = None  # a warm full window's run time, measured by `load`
        self._loaded = False
        self._ready = False
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._draining = False

    # --- lifecycle ---
    @property
    def model_name(self) -> str:
        return self.manifest.name

    def load(self) -> None:
        """Open the session and warm it up (blocking). Raises BundleError, with the reason in one line, for a
        bundle that cannot run: the server calls it before it accepts connections."""
        if self._loaded:
            return
        t0 = time.perf_counter()
        model = self.model
        model.load()
        if self.config.warmup:
            self._window_s = model.warmup()
            L = model.manifest.max_seq_length
            # the largest batch the scheduler will really build, which the measured cost decides: a batch the
            # time budget never allows would only push the peak RSS up (about 70 kB per padded token here)
            by_time = self.config.max_batch_s / max(self._window_s, 1e-9)
            n = int(max(1, min(model.batch_windows, self.config.max_batch_tokens // L, by_time)))
            if n > 1:
                model.dummy_run(n, L)
        self._loaded = True
        log.info(
            "model %s (%s, %s: %s) loaded on %s (%s) in %.1fs",
            model.manifest.name,
            model.variant,
            model.model_file,
            model.pick.reason,
            model.provider,
            model.runtime_pick.reason,
            time.perf_counter() - t0,
        )

    async def start(self) -> None:
        """Start the batcher; a model not loaded yet loads in the background, so that /livez and /readyz answer
        meanwhile (in-process use; the server loads before it listens)."""
        self._load_task = asyncio.get_running_loop().create_task(self._start(), name="model-load")
        if self._loaded:
            await self._load_task

    async def _start(self) -> None:
        c = self.config
        try:
            if not self._loaded:
                await asyncio.to_thread(self.load)
            self.batcher = Batcher(
                self.model.run,
                max_windows=self.model.batch_windows,
                max_tokens=c.max_batch_tokens,
                max_delay_s=c.max_delay_s,
                max_queue=c.max_queue_windows,
                max_batch_s=c.max_batch_s,
                pad_multiple=PAD_MULTIPLE,
                metrics=self.metrics,
            )
            if self._window_s is not None:
                # admission control needs a cost estimate before the first request
                self.batcher.cost.observe(self._window_s, self.manifest.max_seq_length)
            self.batcher.start()
            self._ready = True
        except Exception as e:
            self._load_error = f"model load failed: {first_line(e)}"
            log.exception("model load failed")

    async def stop(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop()

    def begin_drain(self) -> None:
        """SIGTERM: refuse new work and fail readiness now; fail what is still waiting when the drain window ends."""
        self._draining = True
        if self.batcher is not None:
            self.batcher.close("server is shutting down")
            window = max(0.0, self.config.graceful_timeout_s - DRAIN_MARGIN_S)
            asyncio.get_running_loop().call_later(window, self._end_drain)
        log.info("draining: up to %.0fs for in-flight requests", self.config.graceful_timeout_s)

    def _end_drain(self) -> None:
        assert self.batcher is not None
        failed = self.batcher.fail_all(ShuttingDown("server shut down before this request could finish"))
        if failed:
            log.warning("drain window over: %d requests get 503", failed)

    def health(self) -> Health:
        batcher_alive = self.batcher.alive if self.batcher is not None else True
        stalled = self.batcher.stalled_for() if self.batcher is not None else 0.0
        alive = batcher_alive and self._load_error is None and stalled <= self.config.stall_timeout_s
        if self._load_error:
            detail = self._load_error
        elif not batcher_alive:
            detail = "batcher stopped"
        elif not alive:
            detail = f"inference stalled: no progress for {stalled:.0f}s with work waiting"
        elif self._draining:
            detail = "draining for shutdown"
        elif not self._ready:
            detail = "loading model"
        else:
            detail = ""
        return Health(alive=alive, ready=alive and self._ready and not self._draining, detail=detail)

    def model_info(self) -> dict[str, Any]:
        m = self.manifest
        model = self.model
        return {
            "id": m.name,
            "object": "model",
            "name": m.name,
            "languages": m.languages,
            "base_model": m.base_model,
            "max_seq_length": m.max_seq_length,
            "doc_stride": m.doc_stride,
            "max_query_length": m.max_query_length,
            "precision": model.variant,
            "file": model.model_file,
            "variant_reason": model.pick.reason,
            "max_batch_windows": model.batch_windows,
            # what `score` and abstention mean for this bundle, so a client can reason about thresholds
            "score_map": {
                "kind": model.score_map.kind,
                "params": list(model.score_map.params),
                "null": list(model.score_map.null),
            },
            "score_calibration": list(m.score_calibration),
            "null_threshold": m.null_threshold,
            "cpu_features": sorted(model.cpu_flags & REPORTED),
            "execution_provider": model.provider,
            "runtime": model.runtime_pick.name,
            "runtime_reason": model.runtime_pick.reason,
            "scores": [s.model_dump() for s in m.scores],
            "created": m.created,
        }

    def _chars_that_fit(self, windows: Sequence[Window], chars: int, limit: int) -> int:
        """How many characters of text like this passage's `limit` windows hold: their context tokens, at this
        passage's own characters per token (Korean runs about 1.7, English 3 to 4, emoji below 1)."""
        room = windows[0].context_tokens.stop - windows[0].context_tokens.start
        tokens = room + (limit - 1) * (room - self.manifest.doc_stride)
        per_token = chars / max(1, windows[-1].context_tokens.stop)
        return int(tokens * per_token)

    def _check_sizes(self, requests: Sequence[QARequest], per_request: list[list[list[Window]]]) -> None:
        """Refuse (422) what no queue or deadline could ever take, naming the passage, in characters."""
        limit = self.config.max_windows_per_passage
        for i, (r, passages) in enumerate(zip(requests, per_request, strict=True)):
            for p, (text, ws) in enumerate(zip(r.passages, passages, strict=True)):
                if len(ws) > limit:
                    what = f"passage {p + 1}" if len(r.passages) > 1 else "the passage"
                    fits = self._chars_that_fit(ws, len(text), limit)
                    raise InputTooLarge(
                        f"{what} is too long: at most about {fits:,} characters of this kind of text fit "
                        f"(it has {len(text):,}; {len(ws)} windows of {self.manifest.max_seq_length} tokens, the "
                        f"limit is {limit}, QA_MAX_WINDOWS_PER_REQUEST)",
                        Where("passage", i, p),
                    )
            total = sum(len(ws) for ws in passages)
            if total > self.config.max_queue_windows:
                # it could never be queued: a 429 would invite a retry that can never succeed
                raise InputTooLarge(
                    f"the passages need {total} windows together; at most {self.config.max_queue_windows} "
                    "can be queued (QA_MAX_QUEUE_WINDOWS)",
                    Where("passages", i),
                )

    async def answer(self, requests: Sequence[QARequest], cancelled: asyncio.Event | None = None) -> list[QAResult]:
        """Validate every request, then run all their windows through the batcher (one submit), then decode."""
        if not self._ready or self.batcher is None:
            raise NotReady(self._load_error or "model is still loading")
        t0 = time.perf_counter()
        pairs = [(r.question, text) for r in requests for text in r.passages]
        owner = [(i, p) for i, r in enumerate(requests) for p in range(len(r.passages))]
        try:
            flat = await asyncio.to_thread(self.model.windows, pairs)
        except NoTokens as e:
            i, p = owner[e.index]
            raise InvalidInput(str(e), Where("question", i) if e.side == "question" else Where("passage", i, p)) from e
        self.metrics.tokenize_seconds.observe(time.perf_counter() - t0)
        per_request: list[list[list[Window]]] = []
        pos = 0
        for r in requests:
            per_request.append(flat[pos : pos + len(r.passages)])
            pos += len(r.passages)
        self._check_sizes(requests, per_request)
        # All inputs are valid: only now does any of them reach the model, and all of them or none. One
        # submit for the whole body, so it is admitted (or refused) as a whole and resolves as one future.
        budget = self.config.request_timeout_s - (time.perf_counter() - t0)
        windows = [w for passages in per_request for ws in passages for w in ws]
        try:
            future = self.batcher.submit(windows, budget, self.config.request_timeout_s)
        except InputTooLarge as e:
            e.where = Where("request")
            raise
        gone = asyncio.ensure_future(cancelled.wait()) if cancelled is not None else None
        try:
            await asyncio.wait(
                [future, gone] if gone is not None else [future], timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if gone is not None:
                gone.cancel()
        if not future.done():
            future.cancel()  # the batcher drops this request's windows that have not run yet
            if cancelled is not None and cancelled.is_set():
                raise ClientDisconnected("client closed the connection before the answer was ready")
            raise DeadlineExceeded(f"no answer within {self.config.request_timeout_s:g}s (QA_REQUEST_TIMEOUT_S)")
        outputs = iter(future.result())  # raises the batch's error, if any; in submission order
        t1 = time.perf_counter()
        results = []
        for r, passages in zip(requests, per_request, strict=True):
            decoded_input = []
            for text, ws in zip(r.passages, passages, strict=True):
                mine = [next(outputs) for _ in ws]
                decoded_input.append(PassageLogits(text, ws, [o[0] for o in mine], [o[1] for o in mine]))
            decoded = self.model.decode(decoded_input, r.options)
            results.append(QAResult(decoded.answers, decoded.no_answer_score, sum(len(ws) for ws in passages)))
        self.metrics.decode_seconds.observe(time.perf_counter() - t1)
        return results
