"""Scores that mean what they say, and an abstention a retriever can rely on, fitted on held-out training articles.

    python -m model_export calibrate --logits dev_logits.npz --data KorQuAD_v1.0_dev.json --articles 100:112 \
        --tokenizer runs/gpu/final --trim-suffixes 을 를 ... --out runs/calibration
    python -m model_export calibrate --logits fold-1.npz fold-2.npz --articles 0:56 56:112 ...   # out of fold

The logits come from models of the shipped recipe trained WITHOUT the articles they score (the dev slice,
or each fold's held-out block), over two sets: each of those questions with its own paragraph, and with a
paragraph of another of those articles (`cross_article_pairs`). Fitted here:

- `score_calibration` (a, b): a span's softmax share p becomes sigmoid(a * logit(p) + b), minimising the
  log loss of the top answer's score against its exact match, so that 0.8 is right about 80% of the time.
  With `--margin` (`calibrate.margin`), (a, b, c): + c * the null margin (null logit minus the span's).
- `null_threshold`: the null answer wins when its logit beats the best span's by more than this: the
  threshold with the most right decisions over both sets.

The same functions score a bundle on the test split (`measure`), so dev and test figures are comparable.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.spans import Calibration, PassageLogits, calibrated, decode_passages, sigmoid
from app.engine.windows import PairTokenizer, Window, WindowSpec, encode_windows
from model_export.checkpoint import load_tokenizer
from model_export.data import Example, cross_article_pairs
from model_export.held_out import Logits, ServedBundle, calibration_questions, load_logits, pairs_of
from model_export.metrics import CALIBRATION_METRIC, METRICS, Metric, exact_match, f1

log = logging.getLogger(__name__)
ALL_CANDIDATES = 10_000


@dataclass(frozen=True)
class Outcome:
    """One question over one paragraph, decoded without abstention: what calibration needs of it."""

    logits: np.ndarray  # every distinct candidate's logit, best first
    null_logit: float
    text: str  # the top answer
    exact: float  # exact match of the top answer by the calibration's metric (0 for unanswerable pairs)
    f1: float

    @property
    def margin(self) -> float:
        """Null logit minus the best span's: abstain when it exceeds the threshold."""
        return self.null_logit - float(self.logits[0]) if len(self.logits) else np.inf


def fit_from_logits(
    parts: Sequence[tuple[Path, str]],
    data: str,
    tokenizer: PairTokenizer,
    spec: WindowSpec,
    trim_suffixes: Sequence[str],
    margin: bool = False,
    metric: Metric = CALIBRATION_METRIC,
) -> tuple[dict[str, Any], list[Outcome]]:
    """Fit calibration and threshold from dev-logits npz files, each with the articles its model never saw
    (one dev slice, or the held-out block of each fold); returns (the manifest's record, own outcomes).
    A top answer counts as right when it is an exact match by `metric`."""
    own_per_part: list[list[Outcome]] = []
    neg: list[Outcome] = []
    for logits, articles in parts:
        dev = calibration_questions(data, articles)
        cross = cross_article_pairs(dev, random.Random(0))
        with np.load(logits) as z:
            ids_own, own_logits = load_logits(z, "own/")
            ids_cross, cross_logits = load_logits(z, "cross/")
        if ids_own != [e.id for e in dev] or ids_cross != [e.id for e in cross]:
            raise ValueError(f"{logits}: its questions are not those of {data} articles {articles}")
        own_windows = encode_windows(tokenizer, pairs_of(dev), spec)
        own_per_part.append(outcomes(dev, own_windows, own_logits, trim_suffixes, metric=metric))
        neg += outcomes(
            cross, encode_windows(tokenizer, pairs_of(cross), spec), cross_logits, trim_suffixes, metric=metric
        )
    own = [o for part in own_per_part for o in part]
    calibration = fit_platt(own, margin)
    threshold = fit_null_threshold(own, neg)
    fitted_on = f"{Path(data).name} articles {' + '.join(a for _, a in parts)}"
    record = {
        "fitted_on": fitted_on,
        "fit_models": len(parts),
        "metric": metric,
        **measure(own, neg, calibration, threshold),
    }
    if len(own_per_part) > 1:
        record["cross_fitted"] = cross_fitted(own_per_part, margin)
    return record, own


def cross_fitted(parts: Sequence[Sequence[Outcome]], margin: bool = False, bins: int = 10) -> dict[str, Any]:
    """Each part's top answers scored by a map fitted on the other parts only: what unseen articles should
    show. `ece_after` scores the map on the questions it was fitted on, which flatters it."""
    scores: list[float] = []
    correct: list[float] = []
    for i, part in enumerate(parts):
        calibration = fit_platt([o for j, other in enumerate(parts) if j != i for o in other], margin)
        scores += [top_score(o, calibration) for o in part]
        correct += [o.exact for o in part]
    s, c = np.array(scores), np.array(correct)
    return {"ece": ece(s, c, bins), "ece_floor": ece_floor(s, bins), "log_loss": log_loss(s, c)}


def log_loss(scores: np.ndarray, correct: np.ndarray) -> float:
    """Mean negative log-likelihood of exact match under the scores: lower is better, and unlike the ECE it
    does not depend on bins."""
    q = np.clip(scores, 1e-9, 1 - 1e-9)
    return float(-np.mean(correct * np.log(q) + (1 - correct) * np.log(1 - q)))


def outcomes(
    examples: Sequence[Example],
    windows: Sequence[Sequence[Window]],
    logits: Logits,
    trim_suffixes: Sequence[str],
    max_answer_length: int = 30,
    metric: Metric = CALIBRATION_METRIC,
) -> list[Outcome]:
    """Each example decoded from its windows' logits without abstention, scored by `metric`."""
    out = []
    for e, ws, lg in zip(examples, windows, logits, strict=True):
        if [len(w) for w in ws] != [len(s) for s, _ in lg]:
            raise ValueError(f"{e.id}: logits do not match this tokenizer's windows")
        d = decode_passages(
            [PassageLogits(e.context, ws, [s for s, _ in lg], [t for _, t in lg])],
            top_k=ALL_CANDIDATES,
            max_answer_length=max_answer_length,
            trim_suffixes=trim_suffixes,
        )
        text = d.answers[0].text if d.answers else ""
        gold = [t for t, _ in e.answers]
        out.append(
            Outcome(
                np.array([a.logit for a in d.answers]),
                d.null_logit,
                text,
                exact_match(text, gold, metric) if gold else 0.0,
                f1(text, gold, metric) if gold else 0.0,
            )
        )
    return out


def top_share(o: Outcome) -> float:
    """The top answer's softmax share among all distinct candidates: the uncalibrated score."""
    if not len(o.logits):
        return 0.0
    return float(1.0 / np.exp(o.logits - o.logits[0]).sum())


def top_score(o: Outcome, calibration: Calibration = (1.0, 0.0)) -> float:
    return calibrated(top_share(o), calibration, o.margin)


def ece(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |accuracy - mean score| per equal-width bin, weighted by the bin's share."""
    idx = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - scores[m].mean())
    return float(total)


def ece_floor(scores: np.ndarray, bins: int = 10, draws: int = 400, seed: int = 0) -> dict[str, float]:
    """The ECE that perfectly calibrated scores would still show on this many questions: the mean and the
    90th percentile over outcomes drawn as Bernoulli(score). A measured ECE near it is sampling noise."""
    rng = np.random.default_rng(seed)
    draws_ece = [ece(scores, (rng.random(len(scores)) < scores).astype(float), bins) for _ in range(draws)]
    return {"mean": float(np.mean(draws_ece)), "p90": float(np.quantile(draws_ece, 0.9))}


def fit_platt(own: Sequence[Outcome], margin: bool = False, iterations: int = 50) -> Calibration:
    """(a, b) of sigmoid(a * logit(share) + b) minimising the log loss against exact match (Newton's method);
    with `margin`, (a, b, c) adding c * the null margin, kept only when c <= 0 (see app.engine.spans.calibrated).

    A temperature alone cannot fix these scores: near-duplicate spans ("한느", "한느를") split the
    probability, so right answers score too low in the middle, while the rare low scores are too high.
    The null margin carries what the share does not: how sure the model is that the passage holds an answer.

    The targets are Platt's smoothed ones, (n_right + 1) / (n_right + 2) and 1 / (n_wrong + 2), rather than
    1 and 0: when every answer is wrong (or every one right) the unsmoothed optimum lies at infinity, and
    Newton's steps run the scores down to exactly 0. With thousands of questions the shift is below 0.001.
    """
    exact = np.array([o.exact for o in own])
    right = exact.sum()
    correct = np.where(exact > 0.5, (right + 1) / (right + 2), 1 / (len(exact) - right + 2))
    q = np.clip([top_share(o) for o in own], 1e-9, 1 - 1e-9)
    # an outcome without candidates has an infinite margin (and a share of 0); a finite stand-in keeps Newton finite
    margins = np.minimum([o.margin for o in own], 100.0)
    columns = [np.log(q / (1 - q)), np.ones(len(q))] + ([margins] if margin else [])
    x = np.stack(columns, axis=1)
    w = np.zeros(x.shape[1])
    w[0] = 1.0
    for _ in range(iterations):
        p = sigmoid(x @ w)
        grad = x.T @ (p - correct)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    if margin:
        return (float(w[0]), float(w[1]), float(w[2])) if w[2] <= 0 else fit_platt(own, iterations=iterations)
    return float(w[0]), float(w[1])


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    both = np.concatenate([negative, positive])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    for v in np.unique(both):  # average ranks of ties
        m = both == v
        ranks[m] = ranks[m].mean()
    r_pos = ranks[len(negative) :].sum()
    return float((r_pos - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def fit_null_threshold(own: Sequence[Outcome], cross: Sequence[Outcome]) -> float:
    """The threshold with the most right decisions (answer the answerable, abstain on the rest), equal weight
    to both sets; among equally good thresholds, the middle one, farthest from both sets' edges."""
    mo = np.array([o.margin for o in own])
    mc = np.array([o.margin for o in cross])
    cuts = np.unique(np.concatenate([mo, mc]))
    cuts = np.concatenate([cuts[:1] - 1, (cuts[:-1] + cuts[1:]) / 2, cuts[-1:] + 1])
    right = np.array([(mo <= c).mean() + (mc > c).mean() for c in cuts])
    best = np.flatnonzero(right == right.max())
    return float((cuts[best[0]] + cuts[best[-1]]) / 2)


def measure(
    own: Sequence[Outcome], cross: Sequence[Outcome], calibration: Calibration, threshold: float, bins: int = 10
) -> dict[str, Any]:
    """The issue's figures: accuracy with and without abstention, abstention rates, AUROC, ECE and sharpness."""
    correct = np.array([o.exact for o in own])
    raw = np.array([top_share(o) for o in own])
    cal = np.array([top_score(o, calibration) for o in own])
    answered = np.array([o.margin <= threshold for o in own])
    abstain_cross = np.array([o.margin > threshold for o in cross])
    f1s = np.array([o.f1 for o in own])

    def sharp(s: np.ndarray) -> dict[str, float]:
        m = s > 0.9
        return {"share_above_0.9": float(m.mean()), "accuracy_above_0.9": float(correct[m].mean()) if m.any() else 0.0}

    return {
        "n_answerable": len(own),
        "n_cross_article": len(cross),
        "em_f1_no_abstention": [100 * float(correct.mean()), 100 * float(f1s.mean())],
        # an abstention on an answerable question scores 0
        "em_f1_with_abstention": [100 * float((correct * answered).mean()), 100 * float((f1s * answered).mean())],
        "answered_share": float(answered.mean()),
        "cross_article_abstain_share": float(abstain_cross.mean()),
        "auroc_null_margin": auroc(np.array([o.margin for o in own]), np.array([o.margin for o in cross])),
        "ece_before": ece(raw, correct, bins),
        "ece_after": ece(cal, correct, bins),
        "ece_floor_after": ece_floor(cal, bins),
        "sharpness_before": sharp(raw),
        "sharpness_after": sharp(cal),
        "score_calibration": list(calibration),
        "null_threshold": threshold,
    }


def reliability_plot(own: Sequence[Outcome], calibration: Calibration, path: Path, title: str, bins: int = 10) -> None:
    """Accuracy against mean score per bin, before and after the map."""
    import matplotlib  # noqa: PLC0415 - export extra, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - export extra, and after matplotlib.use

    correct = np.array([o.exact for o in own])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    params = ", ".join(f"{k} {v:.2f}" for k, v in zip("abc", calibration, strict=False))
    for cal, label, color in (
        ((1.0, 0.0), "before", "tab:red"),
        (calibration, f"after ({params})", "tab:blue"),
    ):
        s = np.array([top_score(o, cal) for o in own])
        idx = np.minimum((s * bins).astype(int), bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            m = idx == b
            if m.sum() >= 5:
                xs.append(s[m].mean())
                ys.append(correct[m].mean())
                ns.append(m.sum())
        ax.plot(xs, ys, "o-", color=color, label=f"{label}, ECE {ece(s, correct, bins):.3f}")
    ax.set_xlabel("top answer's score")
    ax.set_ylabel("share exactly right")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measure_bundle(
    bundle_dir: Path, data: str, articles: str, out: Path, threads: int = 2, metric: Metric | None = None
) -> dict[str, Any]:
    """The shipped bundle's calibration and abstention figures on `articles` (the test split), with its own
    calibration and threshold; writes calibration_test.json and reliability_test.png into `out`. Exact match
    is by `metric`, by default the one the bundle's calibration was fitted with. Like the fit, it runs the
    answerable questions only: the cross-article pairs are the questions it should abstain on."""
    examples = calibration_questions(data, articles)
    cross = cross_article_pairs(examples, random.Random(0))
    bundle = ServedBundle.open(bundle_dir, threads)
    m = bundle.manifest
    per, logits = bundle.windows_and_logits(examples)
    per_x, logits_x = bundle.windows_and_logits(cross)
    fitted_with = m.calibration.get("metric", CALIBRATION_METRIC)
    metric = metric or next((x for x in METRICS if x == fitted_with), CALIBRATION_METRIC)
    own = outcomes(examples, per, logits, m.trim_suffixes, metric=metric)
    neg = outcomes(cross, per_x, logits_x, m.trim_suffixes, metric=metric)
    result = {
        "bundle": str(bundle_dir),
        "measured_on": f"{Path(data).name} articles {articles}",
        "metric": metric,
        **measure(own, neg, m.score_calibration, m.null_threshold),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_test.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    reliability_plot(own, m.score_calibration, out / "reliability_test.png", f"test split (articles {articles})")
    return result


def fit_files(
    logits_files: Sequence[Path],
    articles: Sequence[str],
    data: str,
    tokenizer_dir: str,
    spec: WindowSpec,
    trim_suffixes: Sequence[str],
    out: Path,
    margin: bool = False,
    metric: Metric = CALIBRATION_METRIC,
) -> dict[str, Any]:
    """`calibrate --logits`: fit from dev-logits files, one per model with the articles it never saw; writes
    calibration.json and reliability_dev.png into `out`."""
    if len(logits_files) != len(articles):
        raise ValueError("give one --articles range per --logits file (the articles its model never saw)")
    parts = [(Path(f), a) for f, a in zip(logits_files, articles, strict=True)]
    result, own = fit_from_logits(parts, data, load_tokenizer(tokenizer_dir), spec, trim_suffixes, margin, metric)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    title = f"held-out training articles {' + '.join(articles)}"
    reliability_plot(own, tuple(result["score_calibration"]), out / "reliability_dev.png", title)
    return result
