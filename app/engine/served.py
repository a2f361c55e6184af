"""ServedModel: a verified bundle on its runtime, as the service runs it: pre (windows), core (run), post (decode).

The service wraps it with the batcher (app.engine.qa); evaluation, calibration, validation and the benchmarks
call it directly, so every number they report comes from the code that serves.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from app.engine.bundle import BundleError, Manifest, read_manifest, verify_bundle
from app.engine.config import ModelConfig
from app.engine.hardware import Pick, cpu_flags, cpu_quota, pick_runtime, pick_variant
from app.engine.interface import DecodeOptions, QARequest
from app.engine.runtime import HeapTrimmer, Runtime, cuda_available, open_runtime, openvino_version
from app.engine.spans import Decoded, PassageLogits, ScoreMap, decode_passages
from app.engine.windows import Window, WindowSpec, encode_windows, pad_batch, pad_token_id

log = logging.getLogger(__name__)

Logits = tuple[np.ndarray, np.ndarray]

# Pad batches to a multiple of this many tokens: few distinct shapes keep ORT's memory and kernel
# caches bounded while wasting at most 31 tokens of padding per window.
PAD_MULTIPLE = 32


def score_map(manifest: Manifest) -> ScoreMap:
    """The bundle's map from logits to probabilities: its fitted `score_map`, else its legacy calibration."""
    spec = manifest.score_map
    if spec is None:
        return ScoreMap.legacy(manifest.score_calibration, manifest.null_threshold)
    return ScoreMap(spec.kind, tuple(spec.params), (spec.null[0], spec.null[1]))


def load_tokenizer(path: Path) -> Tokenizer:
    """The bundle's tokenizer, untruncated and unpadded (windows are cut by `make_windows`, never by it)."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exception subclasses for a malformed file
        raise BundleError(f"{path}: not a tokenizer file the tokenizers library can read ({first_line(e)})") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class ServedModel:
    """One bundle, opened once: its manifest (verified), the variant and runtime picked for this machine, the
    tokenizer and the session. Not thread-safe: one caller (the batcher's thread, or an offline loop) at a time."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.bundle_dir = Path(config.model_dir)
        on_cuda = config.providers == "cuda" or (config.providers == "auto" and cuda_available())
        self.on_cuda = on_cuda
        self.cpu_flags = cpu_flags()
        manifest = read_manifest(self.bundle_dir)
        self.pick: Pick = pick_variant(manifest.variants, config.variant, on_cuda, self.cpu_flags)
        self.variant = self.pick.name
        self.model_file = manifest.variants[self.variant]
        # a bundle that does not match its manifest is never served
        self.manifest: Manifest = verify_bundle(self.bundle_dir, needed=[self.model_file, manifest.tokenizer])
        self.runtime_pick: Pick = pick_runtime(
            self.manifest.files[self.model_file].runtime, config.runtime, on_cuda, openvino_version()
        )
        self.spec = WindowSpec(self.manifest.max_seq_length, self.manifest.doc_stride, self.manifest.max_query_length)
        self.tokenizer = load_tokenizer(self.bundle_dir / self.manifest.tokenizer)
        self.pad_id = pad_token_id(self.tokenizer)
        self.score_map = score_map(self.manifest)
        self.threads = config.threads or cpu_quota()
        self.runtime: Runtime | None = None
        # more than one full window's activations is worth handing back to the OS
        self.trimmer = HeapTrimmer(min_tokens=self.manifest.max_seq_length + 1)

    @classmethod
    def open(cls, config: ModelConfig) -> ServedModel:
        """Verify, pick and load: a model ready to run (no warm-up; see `warmup`)."""
        model = cls(config)
        model.load()
        return model

    # --- choices this machine implies ---
    @property
    def batch_windows(self) -> int:
        """On a CPU one window at a time: every window's result is then independent of what else is queued,
        which neither dynamic int8 (activation scales per tensor) nor OpenVINO's int8 kernels promise in a
        batch, and batching would gain at most 15% there (bench/engine_modes.py)."""
        if self.config.batch_windows:
            return self.config.batch_windows
        return 32 if self.on_cuda else 1

    @property
    def cpu_mem_arena(self) -> bool:
        if self.config.cpu_mem_arena is not None:
            return self.config.cpu_mem_arena
        return not self.on_cuda and self.batch_windows == 1

    @property
    def provider(self) -> str | None:
        return self.runtime.provider if self.runtime is not None else None

    # --- load ---
    def load(self) -> None:
        """Open the session; a file the runtime cannot read or run is a BundleError with the reason in one line."""
        if self.runtime is not None:
            return
        path = self.bundle_dir / self.model_file
        try:
            self.runtime = open_runtime(
                path,
                self.manifest.input_names,
                self.manifest.output_names,
                self.runtime_pick.name,
                self.config.providers,
                self.threads,
                self.config.inter_op_threads,
                self.cpu_mem_arena,
            )
        except Exception as e:  # ORT and OpenVINO raise their own types for a corrupt or foreign graph
            raise BundleError(f"{path}: {self.runtime_pick.name} cannot load it ({first_line(e)})") from e

    def dummy_run(self, rows: int, width: int) -> float:
        """Seconds to run `rows` padding windows of `width` tokens (warm-up and cost probes)."""
        runtime = self._loaded()
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        dummy = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        t0 = time.perf_counter()
        try:
            # exactly the inputs the graph declares: XLM-R, RoBERTa and DistilBERT graphs take no token_type_ids
            runtime.run({name: dummy[name] for name in runtime.input_names})
        except Exception as e:
            raise BundleError(f"{self.bundle_dir / self.model_file}: the model fails to run ({first_line(e)})") from e
        elapsed = time.perf_counter() - t0
        self.trimmer.after_batch(rows * width)
        return elapsed

    def warmup(self) -> float:
        """Run every shape a lone window can take, so that a runtime that plans per shape (OpenVINO) sees them now
        and not on a user's request; returns the median seconds of a full window (the fastest of a few timings is
        10-20% below what served windows take). A graph that loads but cannot run fails here, as a BundleError."""
        L = self.manifest.max_seq_length
        step = self._loaded().pad_multiple
        for width in range(step, L + step, step) if step > 1 else (PAD_MULTIPLE, L):
            self.dummy_run(1, min(width, L))
        return statistics.median(self.dummy_run(1, L) for _ in range(3))

    def _loaded(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeError("ServedModel.load() has not run")
        return self.runtime

    # --- pre / core / post ---
    def windows(self, pairs: Sequence[tuple[str, str]]) -> list[list[Window]]:
        """Each (question, passage) pair's windows. Raises windows.NoTokens naming the pair and the side."""
        return encode_windows(self.tokenizer, pairs, self.spec)

    def run(self, windows: Sequence[Window]) -> list[Logits]:
        """One runtime call on a padded batch: each window's (start, end) logits, cut to its length."""
        runtime = self._loaded()
        # a lone window needs only the runtime's padding; a batch pads to a multiple that keeps kernels aligned
        batch = pad_batch(windows, self.pad_id, PAD_MULTIPLE if len(windows) > 1 else runtime.pad_multiple)
        start, end = runtime.run(batch)
        self.trimmer.after_batch(batch["input_ids"].size)
        return [(start[i, : len(w)], end[i, : len(w)]) for i, w in enumerate(windows)]

    def decode(self, passages: Sequence[PassageLogits], options: DecodeOptions, top_n: int | None = None) -> Decoded:
        """Ranked spans of one question over its passages, with the bundle's particle rules and calibration."""
        return decode_passages(
            passages,
            top_k=options.top_k,
            max_answer_length=options.max_answer_length,
            top_n=max(top_n or self.config.top_n, options.top_k),
            allow_no_answer=options.allow_no_answer,
            trim_suffixes=self.manifest.trim_suffixes,
            score_map=self.score_map,
            min_score=options.min_score,
            allow_overlap=options.allow_overlap,
            align_to_words=options.align_to_words,
        )

    # --- offline: the three stages in a loop, batched as the service batches on this device ---
    def logits(self, windows: Sequence[Sequence[Window]]) -> list[list[Logits]]:
        """Logits of every window of every question, `batch_windows` per call, in order."""
        flat = [w for ws in windows for w in ws]
        out: list[Logits] = []
        n = self.batch_windows
        for i in range(0, len(flat), n):
            out.extend(self.run(flat[i : i + n]))
        it = iter(out)
        return [[next(it) for _ in ws] for ws in windows]

    def answer(self, requests: Sequence[QARequest]) -> list[Decoded]:
        """Each request answered as the service answers it, without the HTTP layer or the batcher."""
        pairs = [(r.question, text) for r in requests for text in r.passages]
        windows = self.windows(pairs)
        it = iter(zip(pairs, windows, self.logits(windows), strict=True))
        out = []
        for r in requests:
            passages = []
            for _ in r.passages:
                (_, text), ws, lg = next(it)
                passages.append(PassageLogits(text, ws, [s for s, _ in lg], [e for _, e in lg]))
            out.append(self.decode(passages, r.options))
        return out
