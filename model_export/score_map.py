"""Fit the bundle's ScoreMap (app.engine.spans) on held-out questions, and choose its family by a rule fixed in advance.

Inputs are what the served file said about questions its model never trained on: for each answerable question
the logits of its candidate spans (best first), whether the best one is exactly right, and the null margin (null
logit minus the best span's); for each question paired with another article's paragraph, the null margin.

- The span map turns candidate logits into the probability that each span is exactly the answer. Families:
  `identity` (the softmax share), `temperature` (softmax of logits / T) and `platt` (sigmoid(a * logit(share) +
  b) for the best span, the others sharing the rest).
- The null map is a logistic regression of "this passage holds no answer" on the null margin, fitted on the
  answerable questions against the cross-article pairs, one of each per question: P(no answer) for passages that
  hold the answer half of the time.
- `choose` scores each span family out of article: every held-out article's questions by a map fitted on the other
  articles. It keeps the identity unless a family lowers that log loss by at least `MIN_GAIN` without raising the
  expected calibration error; a two-parameter family must beat the one-parameter one the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.engine.spans import ScoreMap, sigmoid

FAMILIES = ("identity", "temperature", "platt")
MIN_GAIN = 0.003  # log loss a family with one more parameter must save, out of article
BINS = 10


@dataclass(frozen=True)
class Question:
    """One answerable held-out question as the served file saw it."""

    logits: np.ndarray  # candidate span logits, best first (distinct spans, as decoding ranks them)
    right: bool  # the best span is exactly a gold answer (by the calibration's metric)
    margin: float  # null logit - best span logit
    article: int


def top_probability(m: ScoreMap, q: Question) -> float:
    return float(m.spans(q.logits, q.margin)[0]) if len(q.logits) else 0.0


def ece(scores: np.ndarray, right: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width bins: sum of |accuracy - mean score|, weighted by bin size."""
    scores = np.asarray(scores, np.float64)
    right = np.asarray(right, np.float64)
    idx = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(right[m].mean() - scores[m].mean())
    return float(total / max(1, len(scores)))


def log_loss(scores: np.ndarray, right: np.ndarray) -> float:
    p = np.clip(np.asarray(scores, np.float64), 1e-9, 1 - 1e-9)
    y = np.asarray(right, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def smoothed(right: np.ndarray) -> np.ndarray:
    """Platt's targets: (n+ + 1) / (n+ + 2) and 1 / (n- + 2) instead of 1 and 0, so that a small or one-sided
    set cannot drive a map to certainty."""
    right = np.asarray(right, bool)
    pos = right.sum()
    return np.where(right, (pos + 1) / (pos + 2), 1 / (len(right) - pos + 2))


def logistic(x: np.ndarray, y: np.ndarray, start: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Weights w minimising the log loss of sigmoid(x @ w) against targets y in [0, 1]: Newton's method with a
    backtracking line search. A plain Newton step overshoots when the classes barely overlap (answerable against
    cross-article null margins on the dev slice: a slope of 9e7 instead of ~1); halving the step until the loss
    falls keeps every iterate a descent, and Platt's smoothed targets keep the minimum finite."""

    def loss(w: np.ndarray) -> float:
        z = x @ w
        return float((np.logaddexp(0.0, z) - y * z).sum())

    w = start.astype(np.float64).copy()
    current = loss(w)
    for _ in range(iterations):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while (trial := loss(w - t * step)) > current - 1e-4 * t * float(grad @ step) and t > 1e-12:
            t /= 2
        if trial > current:  # no descent left along Newton's direction: at the minimum, up to rounding
            break
        w, current = w - t * step, trial
        if np.abs(t * step).max() < 1e-10:
            break
    return w


def _shares(questions: Sequence[Question]) -> np.ndarray:
    return np.array([top_probability(ScoreMap(), q) for q in questions])


def fit_platt(questions: Sequence[Question]) -> tuple[float, float]:
    q = np.clip(_shares(questions), 1e-9, 1 - 1e-9)
    x = np.stack([np.log(q / (1 - q)), np.ones(len(q))], axis=1)
    a, b = logistic(x, smoothed(np.array([t.right for t in questions])), np.array([1.0, 0.0]))
    if a <= 0:  # a map that runs against the ranking: fall back to a constant shift
        a, b = 1.0, float(logistic(x[:, 1:], smoothed(np.array([t.right for t in questions])), np.zeros(1))[0])
    return float(a), float(b)


def _padded(questions: Sequence[Question]) -> np.ndarray:
    """Candidate logits as one matrix, best first, padded with -inf (softmax gives padding no share)."""
    width = max((len(q.logits) for q in questions), default=0)
    out = np.full((len(questions), max(width, 1)), -np.inf)
    for i, q in enumerate(questions):
        out[i, : len(q.logits)] = q.logits
    return out


def fit_temperature(questions: Sequence[Question]) -> float:
    """T minimising the log loss of the best span's softmax(logits / T) share (golden-section search on log T)."""
    y = smoothed(np.array([t.right for t in questions]))
    z = _padded(questions)
    has = np.isfinite(z[:, 0])
    gaps = np.where(np.isfinite(z), z - np.where(has, z[:, 0], 0)[:, None], -np.inf)  # <= 0: no overflow

    def loss(log_t: float) -> float:
        top = np.where(has, 1 / np.exp(gaps / np.exp(log_t)).sum(axis=1), 0.0)
        return log_loss(top, y)

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def fit_null(own_margins: np.ndarray, cross_margins: np.ndarray) -> tuple[float, float]:
    """(alpha, beta) of P(no answer) = sigmoid(alpha * margin + beta): answerable pairs against cross-article ones."""
    margins = np.minimum(np.concatenate([own_margins, cross_margins]), 100.0)  # no candidate: an infinite margin
    y = np.concatenate([np.zeros(len(own_margins)), np.ones(len(cross_margins))])
    x = np.stack([margins, np.ones(len(margins))], axis=1)
    alpha, beta = logistic(x, smoothed(y.astype(bool)), np.array([1.0, 0.0]))
    return float(alpha), float(beta)


def fit(family: str, questions: Sequence[Question], null: tuple[float, float] = (1.0, 0.0)) -> ScoreMap:
    if family == "identity":
        return ScoreMap("identity", (), null)
    if family == "temperature":
        return ScoreMap("temperature", (fit_temperature(questions),), null)
    if family == "platt":
        return ScoreMap("platt", fit_platt(questions), null)
    raise ValueError(f"unknown score map family {family!r} (one of {', '.join(FAMILIES)})")


def out_of_article(family: str, questions: Sequence[Question]) -> np.ndarray:
    """Each question's top score from a map fitted on the other articles' questions only."""
    articles = np.array([q.article for q in questions])
    scores = np.zeros(len(questions))
    for a in np.unique(articles):
        held = articles == a
        m = fit(family, [q for q, h in zip(questions, held, strict=True) if not h])
        scores[held] = [top_probability(m, q) for q, h in zip(questions, held, strict=True) if h]
    return scores


def choose(questions: Sequence[Question]) -> dict[str, object]:
    """The rule, applied: each family's out-of-article log loss and ECE, and the family chosen."""
    right = np.array([q.right for q in questions])
    figures: dict[str, dict[str, float]] = {}
    for family in FAMILIES:
        scores = out_of_article(family, questions)
        figures[family] = {"log_loss": log_loss(scores, right), "ece": ece(scores, right)}
    chosen = "identity"
    for family in FAMILIES[1:]:
        better = figures[family]["log_loss"] <= figures[chosen]["log_loss"] - MIN_GAIN
        if better and figures[family]["ece"] <= figures[chosen]["ece"]:
            chosen = family
    return {
        "rule": f"out of article; a family replaces the simpler one only if it lowers the log loss by >= {MIN_GAIN} "
        "without raising the ECE (10 bins); identity (the raw share) unless a map beats it",
        "out_of_article": figures,
        "chosen": chosen,
    }
