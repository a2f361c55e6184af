"""Run a checkpoint, an ONNX bundle or a running service over a split; write predictions, n-best lists and scores."""

from __future__ import annotations

import inspect
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.engine.bundle import Score
from app.engine.config import ModelConfig
from app.engine.hardware import cpu_quota
from app.engine.interface import DecodeOptions, QARequest
from app.engine.served import ServedModel
from app.engine.spans import decode_spans
from app.engine.windows import PairTokenizer, Window, WindowSpec, encode_windows, pad_batch, pad_token_id
from model_export.checkpoint import backend_tokenizer, checkpoint_windows, load_fast_tokenizer
from model_export.data import Example, load_examples
from model_export.metrics import METRICS, score

log = logging.getLogger(__name__)

# start/end logits, each (batch, width), for one padded batch from `pad_batch`
LogitsFn = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
# POST a JSON body to a URL and return the decoded JSON reply (swappable in tests)
PostFn = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Span:
    text: str
    score: float
    start: int  # character offsets into the context
    end: int


class Predictor(Protocol):
    """Anything that answers (question, context) pairs with ranked spans."""

    description: str

    def predict(self, pairs: Sequence[tuple[str, str]], top_k: int, max_answer_length: int) -> list[list[Span]]: ...


class WindowPredictor:
    """Local models: windows from app.engine.windows, length-sorted padded batches, spans from app.engine.spans.

    Only `logits_fn` differs between a PyTorch checkpoint and an ONNX bundle, so both are decoded
    exactly as the service decodes them.
    """

    def __init__(
        self,
        tokenizer: PairTokenizer,
        logits_fn: LogitsFn,
        windows: WindowSpec,
        pad_id: int,
        batch_size: int = 32,
        chunk_examples: int = 256,
        description: str = "local model",
        trim_suffixes: Sequence[str] = (),
    ) -> None:
        if batch_size < 1 or chunk_examples < 1:
            raise ValueError("batch_size and chunk_examples must be positive")
        self.tokenizer = tokenizer
        self.logits_fn = logits_fn
        self.windows = windows
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.chunk_examples = chunk_examples
        self.description = description
        self.trim_suffixes = tuple(trim_suffixes)

    def _logits(self, windows: list[Window]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-window (start, end) logits, cut back to each window's own length."""
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0), np.empty(0))] * len(windows)
        # longest first: padding only grows to the longest window of each batch
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]), reverse=True)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            start, end = self.logits_fn(pad_batch([windows[i] for i in idx], self.pad_id, multiple=8))
            start, end = np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
            for row, i in enumerate(idx):
                n = len(windows[i])
                out[i] = (start[row, :n], end[row, :n])
        return out

    def predict(self, pairs: Sequence[tuple[str, str]], top_k: int, max_answer_length: int) -> list[list[Span]]:
        results: list[list[Span]] = []
        for c in range(0, len(pairs), self.chunk_examples):
            chunk = pairs[c : c + self.chunk_examples]
            per_pair = encode_windows(self.tokenizer, chunk, self.windows)
            flat = [win for wins in per_pair for win in wins]
            logits = self._logits(flat)
            pos = 0
            for (_, context), wins in zip(chunk, per_pair, strict=True):
                mine = logits[pos : pos + len(wins)]
                pos += len(wins)
                decoded = decode_spans(
                    context,
                    wins,
                    [s for s, _ in mine],
                    [e for _, e in mine],
                    top_k=top_k,
                    max_answer_length=max_answer_length,
                    trim_suffixes=self.trim_suffixes,
                )
                results.append([Span(a.text, a.score, a.start, a.end) for a in decoded.answers])
            log.info("%s: %d/%d questions", self.description, len(results), len(pairs))
        return results


def _urllib_post(timeout: float) -> PostFn:
    def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - ServicePredictor only accepts http(s) URLs
            url, data=json.dumps(body).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - http(s) only, see above
            return json.loads(reply.read().decode("utf-8"))

    return post


class ServicePredictor:
    """A running service, through POST {url}/batch_answer; it decodes with its own max_answer_length."""

    RETRY_STATUSES = (429, 503)  # overloaded / not ready yet: worth waiting for

    def __init__(
        self,
        url: str,
        batch_size: int = 32,
        timeout: float = 300.0,
        retries: int = 5,
        post: PostFn | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"service URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.retries = retries
        self.post = post or _urllib_post(timeout)
        self.description = self.url

    def _call(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                return self.post(f"{self.url}/batch_answer", body)
            except urllib.error.HTTPError as e:
                if e.code not in self.RETRY_STATUSES or attempt == self.retries:
                    detail = e.read().decode("utf-8", "replace")[:500]
                    raise RuntimeError(f"{self.url}/batch_answer: HTTP {e.code}: {detail}") from e
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")

    def predict(self, pairs: Sequence[tuple[str, str]], top_k: int, max_answer_length: int) -> list[list[Span]]:
        results: list[list[Span]] = []
        for b in range(0, len(pairs), self.batch_size):
            chunk = pairs[b : b + self.batch_size]
            reply = self._call({"items": [{"question": q, "context": c, "top_k": top_k} for q, c in chunk]})
            got = reply.get("results")
            if not isinstance(got, list) or len(got) != len(chunk):
                raise RuntimeError(f"{self.url}/batch_answer: expected {len(chunk)} results, got {str(reply)[:300]}")
            for item in got:
                results.append(
                    [Span(a["text"], float(a["score"]), int(a["start"]), int(a["end"])) for a in item["answers"]]
                )
            log.info("%s: %d/%d questions", self.url, len(results), len(pairs))
        return results


def torch_logits_fn(model: Any, device: Any) -> LogitsFn:
    """Logits from a transformers QA model; feeds only the inputs its forward() takes."""
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    accepted = set(inspect.signature(model.forward).parameters)

    def run(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items() if k in accepted}
        with torch.inference_mode():
            out = model(**inputs)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()

    return run


def open_checkpoint(
    model_dir: Path, windows: WindowSpec, batch_size: int, threads: int, device: str = "auto"
) -> WindowPredictor:
    """A transformers checkpoint directory (config.json, weights, tokenizer files).

    Its tokenizer is the one transformers loads, as `bundle` ships it, so a checkpoint and its bundle window alike.
    """
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import
    from transformers import AutoModelForQuestionAnswering  # noqa: PLC0415 - export extra

    torch.set_num_threads(threads)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).to(dev).eval()
    tokenizer = backend_tokenizer(load_fast_tokenizer(model_dir, local_files_only=True))
    return WindowPredictor(
        tokenizer, torch_logits_fn(model, dev), windows, pad_token_id(tokenizer), batch_size, description=str(model_dir)
    )


class BundlePredictor:
    """An ONNX bundle answered by ServedModel, the service's own pre (windows), core (the runtime it picks, one
    window per call on a CPU) and post (decoding with the bundle's rules and score map): a bundle's scores come
    from exactly the code that serves it; only the HTTP layer and the batcher are skipped."""

    CHUNK = 256  # questions per pass: bounds the windows held at once, not the result

    def __init__(self, bundle_dir: Path, variant: str, threads: int) -> None:
        self.model = ServedModel.open(
            ModelConfig(model_dir=bundle_dir, variant=variant, providers="cpu", threads=threads)  # type: ignore[arg-type]
        )
        # every shape planned first (OpenVINO), so the speed recorded is the served one
        self.model.warmup()
        self.variant = self.model.variant
        self.served_by = str(self.model.provider)
        self.description = f"{bundle_dir} [{self.variant}]"

    def predict(self, pairs: Sequence[tuple[str, str]], top_k: int, max_answer_length: int) -> list[list[Span]]:
        options = DecodeOptions(top_k=top_k, max_answer_length=max_answer_length)
        results: list[list[Span]] = []
        for c in range(0, len(pairs), self.CHUNK):
            chunk = [QARequest(q, (context,), options) for q, context in pairs[c : c + self.CHUNK]]
            for d in self.model.answer(chunk):
                results.append([Span(a.text, a.score, a.start, a.end) for a in d.answers])
            log.info("%s: %d/%d questions", self.description, len(results), len(pairs))
        return results


def open_bundle(bundle_dir: Path, variant: str, threads: int) -> tuple[BundlePredictor, str]:
    """An ONNX bundle made by model_export, run on the CPU as the service runs it; the predictor and its variant."""
    predictor = BundlePredictor(bundle_dir, variant, threads)
    return predictor, predictor.variant


def open_predictor(
    model: str,
    variant: str = "auto",
    batch_size: int = 32,
    threads: int | None = None,
    windows: dict[str, int | None] | None = None,
) -> tuple[Predictor, str]:
    """A service URL, an ONNX bundle directory (manifest.json) or a checkpoint directory (config.json).

    Returns the predictor and a variant label ("service", "checkpoint" or the bundle precision).
    """
    if model.startswith(("http://", "https://")):
        return ServicePredictor(model, batch_size), "service"
    path = Path(model)
    n_threads = threads or cpu_quota()
    if (path / "manifest.json").is_file():
        return open_bundle(path, variant, n_threads)
    if (path / "config.json").is_file():
        return open_checkpoint(path, checkpoint_windows(path, windows or {}), batch_size, n_threads), "checkpoint"
    raise FileNotFoundError(f"{model}: not a service URL, a bundle (manifest.json) or a checkpoint (config.json)")


def evaluate_predictor(
    predictor: Predictor,
    examples: Sequence[Example],
    out_dir: Path | None = None,
    max_answer_length: int = 30,
    n_best: int = 20,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict every example, score with both metrics and, given `out_dir`, write the three JSON files."""
    if not examples:
        raise ValueError("no examples to evaluate")
    t0 = time.perf_counter()
    spans = predictor.predict([(e.question, e.context) for e in examples], n_best, max_answer_length)
    seconds = time.perf_counter() - t0
    predictions = {e.id: (s[0].text if s else "") for e, s in zip(examples, spans, strict=True)}
    gold = [(e.id, [text for text, _ in e.answers]) for e in examples]
    result: dict[str, Any] = {
        **(meta or {}),
        "model": predictor.description,
        "n": len(examples),
        "answered": sum(1 for t in predictions.values() if t),
        "max_answer_length": max_answer_length,
        "seconds": round(seconds, 3),
        "questions_per_second": round(len(examples) / seconds, 2) if seconds > 0 else None,
        **{metric: score(gold, predictions, metric) for metric in METRICS},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbest = {e.id: [asdict(x) for x in s] for e, s in zip(examples, spans, strict=True)}
        for name, payload in (("predictions", predictions), ("nbest", nbest), ("scores", result)):
            (out_dir / f"{name}.json").write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def evaluate_model(
    model: str,
    data: str,
    articles: str | None = "112:140",
    out_dir: Path | None = None,
    variant: str = "auto",
    max_answer_length: int = 30,
    batch_size: int = 32,
    threads: int | None = None,
    windows: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """Open `model` (checkpoint dir, bundle dir or service URL), evaluate it on `data`[articles]; the scores dict.

    The dict has "squad" and "korquad" ({"exact_match", "f1"} on 0-100), "n", "variant" and timing.
    """
    predictor, chosen = open_predictor(model, variant, batch_size, threads, windows)
    examples = load_examples(data, articles)
    meta = {"data": data, "articles": articles, "variant": chosen}
    return evaluate_predictor(predictor, examples, out_dir, max_answer_length, meta=meta)


def manifest_scores(result: dict[str, Any], dataset: str, split: str) -> list[Score]:
    """The manifest's Score entries (one per metric) for a result of `evaluate_model`."""
    return [
        Score(
            dataset=dataset,
            split=split,
            n=result["n"],
            metric=metric,
            variant=result["variant"],
            exact_match=round(result[metric]["exact_match"], 3),
            f1=round(result[metric]["f1"], 3),
        )
        for metric in METRICS
    ]
