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

import argparse
import json
import logging
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.engine.spans import Calibration, PassageLogits, calibrated, decode_passages, sigmoid
from app.engine.windows import PairTokenizer, Window, encode_pairs, make_windows
from model_export.config import add_window_flags, window_flags
from model_export.data import Example, cross_article_pairs, load_examples
from model_export.metrics import CALIBRATION_METRIC, METRICS, Metric, exact_match, f1

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from app.engine.bundle import Manifest
    from app.engine.runtime import Runtime

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


def windows_for(tokenizer: PairTokenizer, examples: Sequence[Example], w: Any) -> list[list[Window]]:
    encoded = encode_pairs(tokenizer, [(e.question, e.context) for e in examples])
    return [make_windows(p, w.max_seq_length, w.doc_stride, w.max_query_length) for p in encoded]


def save_logits(
    path: Path, examples: Sequence[Example], logits: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]
) -> None:
    """Per-window start/end logits of each example, flattened (make_windows order)."""
    flat = [pair for per in logits for pair in per]
    np.savez(
        path,
        ids=np.array([e.id for e in examples]),
        windows_per_example=np.array([len(per) for per in logits]),
        lengths=np.array([len(s) for s, _ in flat]),
        start=np.concatenate([s for s, _ in flat]).astype(np.float32),
        end=np.concatenate([e for _, e in flat]).astype(np.float32),
    )


def checkpoint_logits(
    model_dir: Path, examples: Sequence[Example], w: Any, threads: int = 2
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per-window logits of a transformers checkpoint (GPU when there is one), in make_windows order."""
    from model_export.evaluate import WindowSettings, open_checkpoint

    settings = WindowSettings(w.max_seq_length, w.doc_stride, w.max_query_length)
    predictor = open_checkpoint(model_dir, settings, 64, threads)
    per = windows_for(predictor.tokenizer, examples, w)
    flat = predictor._logits([x for ws in per for x in ws])
    out, pos = [], 0
    for ws in per:
        out.append(flat[pos : pos + len(ws)])
        pos += len(ws)
    return out


LogitsOf = Callable[[Sequence[Example]], list[list[tuple[np.ndarray, np.ndarray]]]]


def write_dev_logits(logits_of: LogitsOf, examples: Sequence[Example], path: Path) -> Path:
    """own/ (each question with its paragraph) and cross/ (with another article's) logits in one npz;
    `logits_of` is a checkpoint's (`checkpoint_logits`) or a bundle's (`ServedBundle.logits`)."""
    cross = cross_article_pairs(list(examples), random.Random(0))
    tmp = path.with_suffix(".parts")
    tmp.mkdir(parents=True, exist_ok=True)
    save_logits(tmp / "own.npz", examples, logits_of(examples))
    save_logits(tmp / "cross.npz", cross, logits_of(cross))
    with np.load(tmp / "own.npz") as own, np.load(tmp / "cross.npz") as neg:
        both = {f"own/{k}": own[k] for k in own.files} | {f"cross/{k}": neg[k] for k in neg.files}
        np.savez(tmp / "both.npz", **both)
    # the build reuses any file at `path`, so one cut short (a build stopped at the end of a sitting) must not
    # appear there: the rename is atomic
    (tmp / "both.npz").replace(path)
    shutil.rmtree(tmp)
    return path


def calibration_questions(data: str, articles: str) -> list[Example]:
    """The questions of `articles` that calibration runs: the answerable ones. A SQuAD 2.0 question without an
    answer would count as a wrong answer, where it is a null answer's right one."""
    return [e for e in load_examples(data, articles) if e.answers]


def fit_from_logits(
    parts: Sequence[tuple[Path, str]],
    data: str,
    tokenizer: PairTokenizer,
    w: Any,
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
        own_per_part.append(outcomes(dev, windows_for(tokenizer, dev, w), own_logits, trim_suffixes, metric=metric))
        neg += outcomes(cross, windows_for(tokenizer, cross, w), cross_logits, trim_suffixes, metric=metric)
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


def load_logits(z: Any, prefix: str = "") -> tuple[list[str], list[list[tuple[np.ndarray, np.ndarray]]]]:
    counts, lengths = z[f"{prefix}windows_per_example"], z[f"{prefix}lengths"]
    starts = np.split(z[f"{prefix}start"], np.cumsum(lengths)[:-1])
    ends = np.split(z[f"{prefix}end"], np.cumsum(lengths)[:-1])
    out, pos = [], 0
    for n in counts:
        out.append(list(zip(starts[pos : pos + n], ends[pos : pos + n], strict=True)))
        pos += n
    return [str(i) for i in z[f"{prefix}ids"]], out


def outcomes(
    examples: Sequence[Example],
    windows: Sequence[Sequence[Window]],
    logits: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    trim_suffixes: Sequence[str],
    max_answer_length: int = 30,
    metric: Metric = CALIBRATION_METRIC,
) -> list[Outcome]:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def served_file(m: Manifest) -> dict[str, str]:
    """The file and runtime the CPU service picks for a bundle on this machine, and why: what calibration and
    the test figures run through."""
    from app.engine.hardware import cpu_flags, pick_runtime, pick_variant
    from app.engine.runtime import openvino_version

    variant = pick_variant(m.variants, "auto", False, cpu_flags())
    file = m.variants[variant.name]
    runtime = pick_runtime(m.files[file].runtime, "auto", False, openvino_version())
    return {"file": file, "runtime": runtime.name, "why": f"{variant.reason}; {runtime.reason}"}


@dataclass(frozen=True)
class ServedBundle:
    """A bundle opened once as the CPU service would open it: its manifest, the file picked on this machine
    (`served`), that file's session and the tokenizer. Every run through it reuses the session."""

    manifest: Manifest
    served: dict[str, str]
    runtime: Runtime
    tokenizer: Tokenizer

    @classmethod
    def open(cls, bundle_dir: Path, threads: int = 2) -> ServedBundle:
        from tokenizers import Tokenizer

        from app.engine.bundle import read_manifest
        from app.engine.runtime import open_runtime

        m = read_manifest(bundle_dir)
        served = served_file(m)
        rt = open_runtime(bundle_dir / served["file"], m.input_names, m.output_names, served["runtime"], "cpu", threads)
        return cls(m, served, rt, Tokenizer.from_file(str(bundle_dir / m.tokenizer)))

    def windows_and_logits(
        self, examples: Sequence[Example]
    ) -> tuple[list[list[Window]], list[list[tuple[np.ndarray, np.ndarray]]]]:
        """Each question's windows and their logits, one window per call as the CPU service runs them."""
        from app.engine.windows import pad_batch, pad_token_id

        pad = pad_token_id(self.tokenizer)
        per = windows_for(self.tokenizer, examples, self.manifest)
        logits = []
        for ws in per:
            out = []
            for w in ws:
                s, e = self.runtime.run(pad_batch([w], pad, self.runtime.pad_multiple))
                out.append((s[0, : len(w)], e[0, : len(w)]))
            logits.append(out)
        return per, logits

    def logits(self, examples: Sequence[Example]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        return self.windows_and_logits(examples)[1]


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


def _calibrate_command(args: argparse.Namespace) -> int:
    from app.engine.bundle import BundleError

    try:
        return _calibrate(args)
    except (OSError, ValueError, KeyError, BundleError) as e:  # a missing file, a bad range, not a bundle
        print(f"calibrate: {e}", file=sys.stderr)
        return 1


def _calibrate(args: argparse.Namespace) -> int:
    if args.bundle:
        if len(args.articles) != 1:
            raise SystemExit("calibrate --bundle: give one --articles range (the test split)")
        result = measure_bundle(Path(args.bundle), args.data, args.articles[0], Path(args.out), metric=args.metric)
        print(json.dumps(result, indent=1))
        return 0
    from model_export.train import load_tokenizer

    if not (args.logits and args.tokenizer):
        raise SystemExit("calibrate: give --logits and --tokenizer to fit, or --bundle to measure")
    windows = window_flags(args)
    if len(args.logits) != len(args.articles):
        raise SystemExit("calibrate: give one --articles range per --logits file (the articles its model never saw)")
    tokenizer = load_tokenizer(args.tokenizer)
    parts = [(Path(f), a) for f, a in zip(args.logits, args.articles, strict=True)]
    metric = args.metric or CALIBRATION_METRIC
    result, own = fit_from_logits(parts, args.data, tokenizer, windows, args.trim_suffixes, args.margin, metric)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    title = f"held-out training articles {' + '.join(args.articles)}"
    reliability_plot(own, tuple(result["score_calibration"]), out / "reliability_dev.png", title)
    print(json.dumps(result, indent=1))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit score calibration and the null threshold on held-out articles, or measure a bundle's",
    )
    p.add_argument(
        "--logits",
        nargs="+",
        default=[],
        help="fit: npz files of own/ and cross/ per-window logits (model_export build writes them), one per model",
    )
    p.add_argument("--bundle", help="measure instead: a bundle's figures with its own calibration and threshold")
    p.add_argument("--data", required=True, help="SQuAD-format JSON holding the dev articles")
    p.add_argument(
        "--articles",
        nargs="+",
        default=["100:112"],
        help="fit: the articles each --logits file's model never saw, in the same order; --bundle: the test split",
    )
    p.add_argument("--tokenizer", help="fit: dir with the model's tokenizer.json")
    p.add_argument("--trim-suffixes", nargs="*", default=[], help="the bundle's trim_suffixes")
    p.add_argument("--margin", action="store_true", help="fit the null margin's weight too (calibrate.margin)")
    p.add_argument(
        "--metric",
        choices=METRICS,
        help="whose exact match makes an answer right: korquad (the default when fitting) or squad, which also "
        "drops English articles (a, an, the); --bundle: by default the one its calibration was fitted with",
    )
    add_window_flags(p)
    p.add_argument("--out", required=True, help="calibration[_test].json and reliability_{dev,test}.png")
    p.set_defaults(func=_calibrate_command)
