"""The real QA engine: bundle -> tokenizer + runtime (ORT or OpenVINO); pre (windows), core (batcher), post (spans)."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from app.engine.batcher import Batcher, Logits
from app.engine.bundle import BundleError, Manifest, read_manifest, verify_bundle
from app.engine.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InputTooLarge,
    InvalidInput,
    NotReady,
    ShuttingDown,
)
from app.engine.hardware import REPORTED, cpu_flags, pick_runtime, pick_variant
from app.engine.interface import Health, QARequest, QAResult, ReadRequest
from app.engine.runtime import HeapTrimmer, Runtime, cuda_available, open_runtime, openvino_version
from app.engine.spans import PassageLogits, decode_passages
from app.engine.windows import NoTokens, Window, encode_pairs, make_windows, pad_batch, pad_token_id
from app.metrics import Metrics
from app.settings import Settings

log = logging.getLogger(__name__)

# Pad batches to a multiple of this many tokens: few distinct shapes keep ORT's memory and kernel
# caches bounded while wasting at most 31 tokens of padding per window.
PAD_MULTIPLE = 32
# Requests still waiting this long before uvicorn's graceful timeout get a JSON 503, before uvicorn would
# cancel them into plain-text 500s.
DRAIN_MARGIN_S = 1.0


class QAEngine:
    """Loads a bundle (verify synchronously, session + warmup in `start`) and answers requests."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.bundle_dir = Path(settings.model_dir)
        on_cuda = settings.providers == "cuda" or (settings.providers == "auto" and cuda_available())
        # Fail fast, before the port opens: a bundle that does not match its manifest is never served.
        manifest = read_manifest(self.bundle_dir)
        self.on_cuda = on_cuda
        self.cpu_flags = cpu_flags()
        self.pick = pick_variant(manifest.variants, settings.model_variant, on_cuda, self.cpu_flags)
        self.variant = self.pick.name
        self.model_file = manifest.variants[self.variant]
        self.manifest: Manifest = verify_bundle(self.bundle_dir, needed=[self.model_file, manifest.tokenizer])
        built_for = self.manifest.files[self.model_file].runtime
        self.runtime_pick = pick_runtime(built_for, settings.runtime, on_cuda, openvino_version())
        if settings.max_batch_tokens < self.manifest.max_seq_length:
            raise BundleError(
                f"QA_MAX_BATCH_TOKENS={settings.max_batch_tokens} is smaller than one full window "
                f"({self.manifest.max_seq_length} tokens): such a window could never be batched"
            )
        self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / self.manifest.tokenizer))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.pad_id = pad_token_id(self.tokenizer)
        self.runtime: Runtime | None = None
        self.batcher: Batcher[Window] | None = None
        self._ready = False
        self._load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._draining = False
        # more than one full window's activations is worth handing back to the OS
        self.trimmer = HeapTrimmer(min_tokens=self.manifest.max_seq_length + 1)

    # --- lifecycle ---
    @property
    def max_batch_windows(self) -> int:
        """On a CPU one window at a time: every window's result is then independent of what else is queued,
        which neither dynamic int8 (activation scales per tensor) nor OpenVINO's int8 kernels promise in a
        batch, and batching would gain at most 15% there (bench/engine_modes.py)."""
        if self.settings.max_batch_windows:
            return self.settings.max_batch_windows
        return 32 if self.on_cuda else 1

    @property
    def cpu_mem_arena(self) -> bool:
        if self.settings.cpu_mem_arena is not None:
            return self.settings.cpu_mem_arena
        return not self.on_cuda and self.max_batch_windows == 1

    @property
    def model_name(self) -> str:
        return self.manifest.name

    async def start(self) -> None:
        """Begin loading in the background so /livez and /readyz answer while the session warms up."""
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="model-load")

    async def _load(self) -> None:
        s = self.settings
        try:
            t0 = time.perf_counter()
            self.runtime = await asyncio.to_thread(self._open_runtime)
            self.batcher = Batcher(
                self._infer,
                max_windows=self.max_batch_windows,
                max_tokens=s.max_batch_tokens,
                max_delay_s=s.max_delay_ms / 1000,
                max_queue=s.max_queue_windows,
                max_batch_s=s.max_batch_ms / 1000,
                pad_multiple=PAD_MULTIPLE,
                metrics=self.metrics,
            )
            self.batcher.start()
            if s.warmup:
                await asyncio.to_thread(self._warmup)
            self._ready = True
            log.info(
                "model %s (%s, %s: %s) ready on %s (%s) in %.1fs",
                self.manifest.name,
                self.variant,
                self.model_file,
                self.pick.reason,
                self.runtime.provider,
                self.runtime_pick.reason,
                time.perf_counter() - t0,
            )
        except Exception as e:
            self._load_error = f"model load failed: {type(e).__name__}: {e}"
            log.exception("model load failed")

    def _open_runtime(self) -> Runtime:
        s = self.settings
        return open_runtime(
            self.bundle_dir / self.model_file,
            self.manifest.input_names,
            self.manifest.output_names,
            self.runtime_pick.name,
            s.providers,
            s.threads,
            s.inter_op_threads,
            self.cpu_mem_arena,
        )

    def _warmup(self) -> None:
        # The first run of each shape pays for kernel selection: run a short window, a full one, and the
        # largest batch the scheduler will really build, which the measured cost decides. A batch that the
        # time budget never allows would only push the peak RSS up (about 70 kB per padded token here).
        assert self.runtime is not None and self.batcher is not None
        L = self.manifest.max_seq_length

        def run(rows: int, width: int) -> float:
            ids = np.full((rows, width), self.pad_id, dtype=np.int64)
            dummy = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            runtime = self.runtime
            assert runtime is not None
            t0 = time.perf_counter()
            # exactly the inputs the graph declares: XLM-R, RoBERTa and DistilBERT graphs take no token_type_ids
            runtime.run({name: dummy[name] for name in runtime.input_names})
            return time.perf_counter() - t0

        step = self.runtime.pad_multiple
        if step > 1:
            # a runtime that plans per shape sees every lone-window shape now, not on a user's request
            for width in range(step, L + step, step):
                run(1, min(width, L))
        else:
            run(1, PAD_MULTIPLE)
            run(1, L)
        # admission control needs a cost estimate before the first request: time a warm full window (the
        # median of three: the fastest of a few timings is 10-20% below what served windows take)
        self.batcher.cost.observe(statistics.median(run(1, L) for _ in range(3)), L)
        by_time = self.batcher.max_batch_s / max(self.batcher.cost.seconds(L), 1e-9)
        n = int(max(1, min(self.max_batch_windows, self.settings.max_batch_tokens // L, by_time)))
        if n > 1:
            run(n, L)
            self.trimmer.after_batch(n * L)

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
            window = max(0.0, self.settings.graceful_timeout_s - DRAIN_MARGIN_S)
            asyncio.get_running_loop().call_later(window, self._end_drain)
        log.info("draining: up to %.0fs for in-flight requests", self.settings.graceful_timeout_s)

    def _end_drain(self) -> None:
        assert self.batcher is not None
        failed = self.batcher.fail_all(ShuttingDown("server shut down before this request could finish"))
        if failed:
            log.warning("drain window over: %d requests get 503", failed)

    def health(self) -> Health:
        batcher_alive = self.batcher.alive if self.batcher is not None else True
        stalled = self.batcher.stalled_for() if self.batcher is not None else 0.0
        alive = batcher_alive and self._load_error is None and stalled <= self.settings.stall_timeout_s
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
        return {
            "id": m.name,
            "object": "model",
            "name": m.name,
            "languages": m.languages,
            "base_model": m.base_model,
            "max_seq_length": m.max_seq_length,
            "doc_stride": m.doc_stride,
            "max_query_length": m.max_query_length,
            "precision": self.variant,
            "file": self.model_file,
            "variant_reason": self.pick.reason,
            "max_batch_windows": self.max_batch_windows,
            # what `score` and abstention mean for this bundle, so a client can reason about thresholds
            "score_calibration": list(m.score_calibration),
            "null_threshold": m.null_threshold,
            "cpu_features": sorted(self.cpu_flags & REPORTED),
            "execution_provider": self.runtime.provider if self.runtime else None,
            "runtime": self.runtime_pick.name,
            "runtime_reason": self.runtime_pick.reason,
            "scores": [s.model_dump() for s in m.scores],
            "created": m.created,
        }

    # --- pre / core / post ---
    def _windows(self, pairs: list[tuple[str, str]]) -> list[list[Window]]:
        m = self.manifest
        encoded = encode_pairs(self.tokenizer, pairs)
        return [make_windows(p, m.max_seq_length, m.doc_stride, m.max_query_length) for p in encoded]

    def _infer(self, windows: list[Window]) -> list[Logits]:
        assert self.runtime is not None
        # a lone window needs only the runtime's padding; a batch pads to a multiple that keeps kernels aligned
        batch = pad_batch(windows, self.pad_id, PAD_MULTIPLE if len(windows) > 1 else self.runtime.pad_multiple)
        start, end = self.runtime.run(batch)
        self.trimmer.after_batch(batch["input_ids"].size)
        return [(start[i, : len(w)], end[i, : len(w)]) for i, w in enumerate(windows)]

    async def answer(self, requests: list[QARequest], cancelled: asyncio.Event | None = None) -> list[QAResult]:
        def where(i: int, name: str) -> tuple[str | int, ...]:
            # a batch names the item at fault; a single request just the field
            return ("items", i, name) if len(requests) > 1 else (name,)

        jobs = [
            _Question(
                r.question,
                (r.context,),
                r.top_k,
                r.max_answer_length,
                r.allow_no_answer,
                where(i, "question"),
                (where(i, "context"),),
                where(i, "context"),
                "context",
            )
            for i, r in enumerate(requests)
        ]
        return await self._run(jobs, cancelled)

    async def read(self, request: ReadRequest, cancelled: asyncio.Event | None = None) -> QAResult:
        job = _Question(
            request.question,
            request.passages,
            request.top_k,
            request.max_answer_length,
            request.allow_no_answer,
            ("question",),
            tuple(("passages", p) for p in range(len(request.passages))),
            ("passages",),
            "passage",
        )
        [result] = await self._run([job], cancelled)
        return result

    async def _run(self, jobs: list[_Question], cancelled: asyncio.Event | None) -> list[QAResult]:
        """Validate every job, then run all their windows through the batcher (one submit per job), then decode."""
        if not self._ready or self.batcher is None:
            raise NotReady(self._load_error or "model is still loading")
        t0 = time.perf_counter()
        pairs = [(j.question, c) for j in jobs for c in j.passages]
        owner = [(j, p) for j in jobs for p in range(len(j.passages))]
        try:
            flat = await asyncio.to_thread(self._windows, pairs)
        except NoTokens as e:
            job, p = owner[e.index]
            raise InvalidInput(str(e), job.question_field if e.side == "question" else job.passage_fields[p]) from e
        self.metrics.tokenize_seconds.observe(time.perf_counter() - t0)
        limit = self.settings.max_windows_per_request
        for (job, p), ws in zip(owner, flat, strict=True):
            if len(ws) > limit:
                raise InputTooLarge(
                    f"{job.noun} needs {len(ws)} windows of {self.manifest.max_seq_length} tokens; "
                    f"the limit is {limit} (QA_MAX_WINDOWS_PER_REQUEST)",
                    job.passage_fields[p],
                )
        per_job: list[list[list[Window]]] = []
        pos = 0
        for job in jobs:
            per_job.append(flat[pos : pos + len(job.passages)])
            pos += len(job.passages)
        for job, passages in zip(jobs, per_job, strict=True):
            total = sum(len(ws) for ws in passages)
            if total > self.settings.max_queue_windows:
                # it could never be queued: a 429 would invite a retry that can never succeed
                raise InputTooLarge(
                    f"passages need {total} windows together; at most {self.settings.max_queue_windows} "
                    "can be queued (QA_MAX_QUEUE_WINDOWS)",
                    job.group_field,
                )
        # All inputs are valid: only now does any of them reach the model, and all of them or none. One
        # submit for the whole body, so it is admitted (or refused) as a whole and resolves as one future.
        budget = self.settings.request_timeout_s - (time.perf_counter() - t0)
        windows = [w for passages in per_job for ws in passages for w in ws]
        try:
            future = self.batcher.submit(windows, budget, self.settings.request_timeout_s)
        except InputTooLarge as e:
            e.field = ("items",) if len(jobs) > 1 else jobs[0].group_field
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
            raise DeadlineExceeded(f"no answer within {self.settings.request_timeout_s}s (QA_REQUEST_TIMEOUT_S)")
        outputs = iter(future.result())  # raises the batch's error, if any; in submission order
        t1 = time.perf_counter()
        results = []
        for job, passages in zip(jobs, per_job, strict=True):
            decoded_input = []
            for context, ws in zip(job.passages, passages, strict=True):
                mine = [next(outputs) for _ in ws]
                decoded_input.append(PassageLogits(context, ws, [o[0] for o in mine], [o[1] for o in mine]))
            decoded = decode_passages(
                decoded_input,
                top_k=job.top_k,
                max_answer_length=job.max_answer_length,
                top_n=max(self.settings.top_n, job.top_k),
                allow_no_answer=job.allow_no_answer,
                trim_suffixes=self.manifest.trim_suffixes,
                calibration=self.manifest.score_calibration,
                null_threshold=self.manifest.null_threshold,
            )
            results.append(QAResult(decoded.answers, decoded.no_answer_score, sum(len(ws) for ws in passages)))
        self.metrics.decode_seconds.observe(time.perf_counter() - t1)
        return results


@dataclass(frozen=True)
class _Question:
    """One question over one or more passages, with the request fields to name when one of them is bad."""

    question: str
    passages: Sequence[str]
    top_k: int
    max_answer_length: int
    allow_no_answer: bool
    question_field: tuple[str | int, ...]
    passage_fields: tuple[tuple[str | int, ...], ...]
    group_field: tuple[str | int, ...]  # the passages as a whole (their total size)
    noun: str  # what the request calls one passage, for messages
