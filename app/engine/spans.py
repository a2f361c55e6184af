"""Start/end logits of the windows of one or more passages -> ranked character spans (pure numpy; shared)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.engine.windows import Window


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # probability that the span is exactly the answer (ScoreMap)
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


# Answers may end in a closing bracket, quote or % (KorQuAD's gold answers do), but never in these
TRAILING = frozenset(",\uff0c\u3001")  # comma, fullwidth comma, ideographic comma


def _trim(context: str, start: int, end: int) -> tuple[int, int]:
    # SentencePiece tokens carry their leading space ("▁word"); answers should not.
    while start < end and context[start].isspace():
        start += 1
    while end > start and (context[end - 1].isspace() or context[end - 1] in TRAILING):
        end -= 1
    # NFKC folds "e" + U+0301 into one token whose offsets end before the combining mark:
    # keep the marks with their base character
    while start < end < len(context) and unicodedata.category(context[end]).startswith("M"):
        end += 1
    return start, end


def _word_char(c: str) -> bool:
    return c.isalnum() or unicodedata.category(c).startswith("M")


def _align_to_words(context: str, start: int, end: int) -> tuple[int, int]:
    """Widen a span to whole words (letters, digits and their marks), as transformers' `align_to_words` does for
    space-separated languages: a span that starts or ends inside "Eiffel" becomes "Eiffel"."""
    while start > 0 and _word_char(context[start - 1]) and _word_char(context[start]):
        start -= 1
    while end < len(context) and _word_char(context[end]) and _word_char(context[end - 1]):
        end += 1
    return start, end


def span_of(
    context: str, start: int, end: int, trim_suffixes: Sequence[str] = (), align_to_words: bool = False
) -> tuple[int, int]:
    """A candidate's character span as an answer: whitespace and trailing commas trimmed, then either widened to
    whole words, or cut of one particle (the longest of `trim_suffixes` it ends in, never the whole span) and
    trimmed again, so that "이보영, " and "시위를" come out as "이보영" and "시위"."""
    start, end = _trim(context, start, end)
    if start >= end:
        return start, end
    if align_to_words:
        return _trim(context, *_align_to_words(context, start, end))
    for suffix in trim_suffixes:
        if end - start > len(suffix) and context.endswith(suffix, start, end):
            return _trim(context, start, end - len(suffix))
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


ScoreKind = Literal["identity", "temperature", "platt"]


@dataclass(frozen=True)
class ScoreMap:
    """Logits -> probabilities on one scale, for the answers and for "no answer".

    - `spans(logits)`: the probability that each candidate span is exactly the answer, given that the passages
      hold one. "identity" is the softmax over all candidates; "temperature" the softmax of logits / T;
      "platt" maps the best candidate's softmax share p to sigmoid(a * logit(p) + b [+ c * null margin]) and
      gives the others what is left, in proportion to their shares. Each sums to 1 over the candidates.
    - `no_answer(margin)`: the probability that the passages hold no answer, sigmoid(alpha * margin + beta), where
      margin is the null logit minus the best span's.
    An answer's score is then (1 - P(no answer)) * its span probability when no answer is allowed, so that
    the answers and the null answer of a response sum to at most 1.
    """

    kind: ScoreKind = "identity"
    params: tuple[float, ...] = ()  # temperature: (T,); platt: (a, b) or (a, b, c)
    null: tuple[float, float] = (1.0, 0.0)  # (alpha, beta)

    @classmethod
    def legacy(cls, calibration: Calibration, null_threshold: float) -> ScoreMap:
        """A bundle from before the joint map: its Platt (a, b[, c]), and a null answer even at its threshold."""
        kind: ScoreKind = "identity" if tuple(calibration) == (1.0, 0.0) else "platt"
        return cls(kind, tuple(calibration) if kind == "platt" else (), (1.0, -float(null_threshold)))

    def spans(self, logits: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Probabilities of candidates sorted best first (`logits` descending)."""
        if not len(logits):
            return logits.astype(np.float64)
        if self.kind == "temperature":
            return _softmax(np.asarray(logits, np.float64) / self.params[0])
        shares = _softmax(np.asarray(logits, np.float64))
        if self.kind == "identity":
            return shares
        top = calibrated(float(shares[0]), self.params, margin)  # type: ignore[arg-type]
        # the runner-ups' own sum, not 1 - shares[0]: that difference cancels when the best share is near 1, and
        # the rescaled rest then sums past 1 - top (logits 26 and 0: a total of 1 + 7e-8)
        tail = shares[1:].sum()
        rest = shares[1:] * ((1 - top) / tail) if tail > 0 else shares[1:]
        # the map may lower the best share below a runner-up's rescaled one; never reorder
        return np.concatenate([[top], np.minimum(rest, top)])

    def no_answer(self, margin: float) -> float:
        alpha, beta = self.null
        return float(sigmoid(alpha * min(margin, 1e6) + beta))


@dataclass(frozen=True)
class _Candidate:
    passage: int
    start: int
    end: int
    logit: float


def _distinct(ranked: Sequence[_Candidate], k: int) -> list[int]:
    """Indices of the best `k` candidates of which no two overlap in characters within one passage."""
    chosen: list[int] = []
    taken: dict[int, list[tuple[int, int]]] = {}
    for i, c in enumerate(ranked):
        spans = taken.setdefault(c.passage, [])
        if any(c.start < e and s < c.end for s, e in spans):
            continue
        spans.append((c.start, c.end))
        chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


def decode_spans(
    context: str,
    windows: Sequence[Window],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    **options: Any,
) -> Decoded:
    """Merge the windows of one context into its top-k spans: one passage of `decode_passages`."""
    return decode_passages([PassageLogits(context, windows, start_logits, end_logits)], **options)


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
    score_map: ScoreMap | None = None,
    min_score: float | None = None,
    allow_overlap: bool = False,
    align_to_words: bool = False,
) -> Decoded:
    """Merge all windows of all passages of one question into its top-k (passage, span) answers.

    Every window is scored with raw start+end logits, which share one scale across windows and
    passages; a per-window softmax would favour spans from short windows. Each candidate becomes an
    answer span with `span_of` (whitespace and trailing commas trimmed; a Korean particle cut, or the
    span widened to whole words with `align_to_words`); identical (passage, span) candidates from
    overlapping windows or particle variants keep their best logit.
    `score_map` (from the bundle; a legacy `calibration` and `null_threshold` when None) turns the
    logits into probabilities: `score` is the probability that the span is exactly the answer, given
    that the passages hold one, times 1 - `no_answer_score` when `allow_no_answer`; the null logit is
    the lowest [CLS] start+end over every window. The answers are the best candidates of which no two
    overlap (unless `allow_overlap`); with `allow_no_answer` only those more probable than no answer
    come back, or, when `min_score` is given, those scoring at least that.
    """
    smap = score_map if score_map is not None else ScoreMap.legacy(calibration, null_threshold)
    best: dict[tuple[int, int, int], float] = {}
    null_logit = np.inf
    for p, passage in enumerate(passages):
        context = passage.context
        for window, s_log, e_log in zip(passage.windows, passage.start_logits, passage.end_logits, strict=True):
            null_logit = min(null_logit, float(s_log[0] + e_log[0]))
            s_tok, e_tok, logits = window_candidates(s_log, e_log, window, top_n, max_answer_length)
            for s, e, logit in zip(s_tok, e_tok, logits, strict=True):
                start, end = span_of(
                    context, int(window.offsets[s, 0]), int(window.offsets[e, 1]), trim_suffixes, align_to_words
                )
                if start >= end:
                    continue
                key = (p, start, end)
                if logit > best.get(key, -np.inf):
                    best[key] = float(logit)

    ranked = [_Candidate(p, s, e, logit) for (p, s, e), logit in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))]
    logits = np.array([c.logit for c in ranked], dtype=np.float64)
    margin = null_logit - logits[0] if len(logits) else np.inf
    probs = smap.spans(logits, float(margin))
    no_answer = smap.no_answer(float(margin)) if allow_no_answer else None
    scale = 1.0 - no_answer if no_answer is not None else 1.0
    keep = range(min(top_k, len(ranked))) if allow_overlap else _distinct(ranked, top_k)
    answers = [
        Answer(
            passages[ranked[i].passage].context[ranked[i].start : ranked[i].end],
            float(probs[i] * scale),
            ranked[i].start,
            ranked[i].end,
            ranked[i].logit,
            ranked[i].passage,
        )
        for i in keep
    ]
    if min_score is not None:
        answers = [a for a in answers if a.score >= min_score]
    elif no_answer is not None:
        answers = [a for a in answers if a.score > no_answer]
    return Decoded(answers, no_answer, float(null_logit))
