"""Start/end logits of the windows of one or more passages -> ranked character spans (pure numpy; shared)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.engine.windows import Window


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # softmax probability among the request's candidate spans (see README)
    start: int  # character offsets into the passage: text == passages[passage][start:end]
    end: int
    logit: float  # start logit + end logit, the raw ranking key
    passage: int = 0  # which passage of the request the offsets index into


@dataclass(frozen=True)
class PassageLogits:
    """One passage and the logits of its windows, as the model returned them."""

    context: str
    windows: Sequence[Window]
    start_logits: Sequence[np.ndarray]
    end_logits: Sequence[np.ndarray]


@dataclass(frozen=True)
class Decoded:
    answers: list[Answer]
    no_answer_score: float | None  # set only when the null answer took part (allow_no_answer)
    null_logit: float


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    window: Window,
    top_n: int,
    max_answer_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token (start, end, start+end logit) triples from the top-N starts x top-N ends inside the context."""
    lo, hi = window.context_start, window.context_end
    s_log = start_logits[lo:hi]
    e_log = end_logits[lo:hi]
    n = min(top_n, hi - lo)
    if n <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    # argpartition then a stable sort keeps ties deterministic
    s_top = np.sort(np.argpartition(-s_log, n - 1)[:n])
    e_top = np.sort(np.argpartition(-e_log, n - 1)[:n])
    s_grid, e_grid = np.meshgrid(s_top, e_top, indexing="ij")
    length = e_grid - s_grid + 1
    ok = (length >= 1) & (length <= max_answer_length)
    s_tok, e_tok = s_grid[ok] + lo, e_grid[ok] + lo
    return s_tok, e_tok, (start_logits[s_tok] + end_logits[e_tok]).astype(np.float32)


def _trim(context: str, start: int, end: int) -> tuple[int, int]:
    # SentencePiece tokens carry their leading space ("▁word"); answers should not.
    while start < end and context[start].isspace():
        start += 1
    while end > start and context[end - 1].isspace():
        end -= 1
    # NFKC folds "e" + U+0301 into one token whose offsets end before the combining mark:
    # keep the marks with their base character
    while start < end < len(context) and unicodedata.category(context[end]).startswith("M"):
        end += 1
    return start, end


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """1 / (1 + e^-z) without overflow: a map fitted to an always-wrong model drives z far below zero, where
    e^-z is inf (and numpy warns) although the limit, 0, is exact."""
    e = np.exp(-np.abs(z))
    return np.where(np.asarray(z) >= 0, 1 / (1 + e), e / (1 + e))


Calibration = tuple[float, float] | tuple[float, float, float]


def calibrated(p: float, calibration: Calibration, margin: float = 0.0) -> float:
    """Platt scaling in log-odds space: (a, b) maps a share p to sigmoid(a * logit(p) + b); a third weight c
    adds c * margin, the null logit minus the span's (a passage that hardly holds an answer lowers every
    span's score; c <= 0, so the map never reorders spans). (1, 0) is the identity."""
    a, b, c = (*calibration, 0.0)[:3]
    if (a, b, c) == (1.0, 0.0, 0.0):
        return p
    q = min(max(p, 1e-9), 1 - 1e-9)
    z = a * np.log(q / (1 - q)) + b
    # without a margin weight the margin plays no part, even an infinite one (a question with no candidate span)
    if c:
        z += c * margin
    return float(sigmoid(z))


def decode_spans(
    context: str,
    windows: Sequence[Window],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    *,
    top_k: int,
    max_answer_length: int,
    top_n: int = 20,
    allow_no_answer: bool = False,
    trim_suffixes: Sequence[str] = (),
    calibration: Calibration = (1.0, 0.0),
    null_threshold: float = 0.0,
) -> Decoded:
    """Merge the windows of one context into the top-k distinct character spans: one passage of `decode_passages`."""
    return decode_passages(
        [PassageLogits(context, windows, start_logits, end_logits)],
        top_k=top_k,
        max_answer_length=max_answer_length,
        top_n=top_n,
        allow_no_answer=allow_no_answer,
        trim_suffixes=trim_suffixes,
        calibration=calibration,
        null_threshold=null_threshold,
    )


def decode_passages(
    passages: Sequence[PassageLogits],
    *,
    top_k: int,
    max_answer_length: int,
    top_n: int = 20,
    allow_no_answer: bool = False,
    trim_suffixes: Sequence[str] = (),
    calibration: Calibration = (1.0, 0.0),
    null_threshold: float = 0.0,
) -> Decoded:
    """Merge all windows of all passages of one question into the top-k distinct (passage, span) answers.

    Every window is scored with raw start+end logits, which share one scale across windows and
    passages; a per-window softmax would favour spans from short windows. `trim_suffixes` (longest
    first) are cut from span ends: Korean particles ride inside the answer's last token ("시위를"), and
    the bundle lists the ones that, on the training split, more often follow the answer than belong
    to it. Identical (passage, span) candidates found in overlapping windows keep their best logit.
    `score` is the softmax of the logit over all distinct candidates of all passages (plus the null
    answer when `allow_no_answer`, whose logit is the lowest [CLS] start+end over every window), so
    one passage alone gives the same answers as a one-passage request. A span's share p then goes through
    `calibration` (a, b[, c]) = sigmoid(a * logit(p) + b [+ c * (null logit - span logit)]), fitted on held-out
    training articles so that a score of 0.8 is exactly right about 80% of the time; the map is monotone
    (c <= 0), so it never reorders answers.
    The null answer wins when its logit beats the best span's by more than `null_threshold`, also fitted on
    held-out training articles; `no_answer_score` stays the null answer's uncalibrated share.
    """
    best: dict[tuple[int, int, int], float] = {}
    null_logit = np.inf
    for p, passage in enumerate(passages):
        context = passage.context
        for window, s_log, e_log in zip(passage.windows, passage.start_logits, passage.end_logits, strict=True):
            null_logit = min(null_logit, float(s_log[0] + e_log[0]))
            s_tok, e_tok, logits = window_candidates(s_log, e_log, window, top_n, max_answer_length)
            for s, e, logit in zip(s_tok, e_tok, logits, strict=True):
                start, end = _trim(context, int(window.offsets[s, 0]), int(window.offsets[e, 1]))
                if start >= end:
                    continue
                for suffix in trim_suffixes:
                    if end - start > len(suffix) and context.endswith(suffix, start, end):
                        end -= len(suffix)
                        break
                key = (p, start, end)
                if logit > best.get(key, -np.inf):
                    best[key] = float(logit)

    spans = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))
    logits = np.array([v for _, v in spans] + ([null_logit] if allow_no_answer else []), dtype=np.float64)
    probs = _softmax(logits) if len(logits) else logits
    answers = [
        Answer(passages[p].context[s:e], calibrated(float(prob), calibration, null_logit - logit), s, e, logit, p)
        for ((p, s, e), logit), prob in zip(spans[:top_k], probs, strict=False)
    ]
    no_answer_score = None
    if allow_no_answer:
        no_answer_score = float(probs[-1])
        if not answers or null_logit > answers[0].logit + null_threshold:
            answers = []
    return Decoded(answers, no_answer_score, float(null_logit))
