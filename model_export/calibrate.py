"""The shipped model's score map, fitted on its own served scores of articles it never trained on, and what a map
does on any set of articles (the test split included); docs/calibration.md is the rule this follows.

    python -m model_export calibrate --bundle B --data KorQuAD_v1.0_dev.json --articles 112:140 --out OUT
    python -m model_export calibrate --bundle B --data ... --articles 100:112 --out OUT --fit   # B never saw these

Each answerable question of the articles runs through the bundle's served file as the CPU service runs it
(`ServedModel`: its tokenizer, windows and runtime, one window per call), over its own paragraph and over a
paragraph of another of those articles (`cross_article_pairs`, which never holds its answer). Decoding keeps every
distinct candidate, best first: the list the service's ScoreMap turns into probabilities. model_export.score_map
chooses the span map's family by the rule fixed in advance and fits it, with the null map from the two sets of
null margins; `measure` reports what a map does, by the same functions on dev and on test.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.config import ModelConfig
from app.engine.interface import DecodeOptions
from app.engine.served import ServedModel
from app.engine.spans import PassageLogits, ScoreMap, decode_passages
from app.engine.windows import Window
from model_export.data import (
    ArticleRangeError,
    Example,
    article_count,
    articles_spec,
    cross_article_pairs,
    load_examples,
    parse_articles,
)
from model_export.metrics import CALIBRATION_METRIC, METRICS, Metric, exact_match, f1
from model_export.score_map import BINS, Question, choose, ece, fit, fit_null, log_loss

log = logging.getLogger(__name__)

# top_k for decoding every candidate: each question then keeps all the distinct spans its windows offer
ALL_CANDIDATES = 10_000
# each question's per-window (start, end) logits, in encode_windows order
Logits = list[list[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Outcome:
    """One question over one paragraph, decoded without abstention: what calibration needs of it."""

    logits: np.ndarray  # every distinct candidate's logit, best first: the list the service's ScoreMap sees
    null_logit: float
    text: str  # the top answer
    exact: float  # exact match of the top answer by the calibration's metric (0 for unanswerable pairs)
    f1: float
    title: str = ""  # the paragraph's article

    @property
    def margin(self) -> float:
        """Null logit minus the best span's: P(no answer) grows with it."""
        return self.null_logit - float(self.logits[0]) if len(self.logits) else np.inf


@dataclass(frozen=True)
class HeldOut:
    """Answerable questions of some articles through a bundle's served file: over their own paragraphs (`own`) and
    over another article's (`cross`)."""

    own: list[Outcome]
    cross: list[Outcome]
    articles: str  # "<data file> articles <range>"
    served_by: dict[str, Any]  # the file, runtime and provider that produced the logits, and why those


def calibration_questions(data: str, articles: str) -> list[Example]:
    """The questions of `articles` that calibration runs: the answerable ones. A SQuAD 2.0 question without an
    answer would count as a wrong answer, where it is a null answer's right one."""
    return [e for e in load_examples(data, articles) if e.answers]


def pairs_of(examples: Sequence[Example]) -> list[tuple[str, str]]:
    return [(e.question, e.context) for e in examples]


def trained_on(training: Mapping[str, Any], data: str | Path, articles: str) -> str | None:
    """The articles of `articles` that a model's training record (training.json, a manifest's `training`) says it
    trained on, as a spec, when it trained on a file of the same name; None when it names none of them."""
    config = training.get("config")
    if not isinstance(config, Mapping) or Path(str(config.get("train_file", ""))).name != Path(data).name:
        return None
    n = article_count(data)
    try:
        trained = parse_articles(config.get("train_articles"), n)
    except ArticleRangeError:  # a range that selects none of this file's articles: another file of that name
        return None
    shared = set(trained) & set(parse_articles(articles, n))
    return articles_spec(sorted(shared)) if shared else None


# ---------------------------------------------------------------- through the served file


def open_served(bundle_dir: Path, threads: int | None = None, variant: str = "auto") -> ServedModel:
    """A bundle opened as the CPU service opens it (verified; the file and runtime this machine picks)."""
    return ServedModel.open(
        ModelConfig(model_dir=Path(bundle_dir), variant=variant, providers="cpu", threads=threads or 0)  # type: ignore[arg-type]
    )


def served_by(model: ServedModel) -> dict[str, Any]:
    m = model.manifest
    return {
        "file": model.model_file,
        "sha256": m.files[model.model_file].sha256,
        "runtime": model.runtime_pick.name,
        "provider": model.provider,
        "why": f"{model.pick.reason}; {model.runtime_pick.reason}",
        "windows_per_call": model.batch_windows,
    }


def cache_key(model: ServedModel) -> dict[str, Any]:
    """What the logits depend on: the served file's bytes, the runtime that runs it, the tokenizer and the windows."""
    m = model.manifest
    return {
        "file_sha256": m.files[model.model_file].sha256,
        "runtime": model.runtime_pick.name,
        "tokenizer_sha256": m.files[m.tokenizer].sha256,
        "windows": [m.max_seq_length, m.doc_stride, m.max_query_length],
    }


def held_out_pairs(data: str, articles: str) -> tuple[list[Example], list[Example]]:
    """The answerable questions of `articles`, and each over a paragraph of another of those articles (ValueError
    when they come from fewer than two articles)."""
    own = calibration_questions(data, articles)
    return own, cross_article_pairs(own, random.Random(0))


def run_served(
    model: ServedModel,
    pairs: tuple[list[Example], list[Example]],
    label: str,
    metric: Metric = CALIBRATION_METRIC,
    cache: Path | None = None,
) -> HeldOut:
    """`held_out_pairs` run through `model` and decoded; with `cache`, their logits are read from and written to that
    npz, reused only for the same served file (sha256), runtime, tokenizer, windows and questions."""
    own_examples, cross_examples = pairs
    key = cache_key(model)
    cached = read_logits(cache, key, own_examples, cross_examples) if cache is not None else None
    own_windows = model.windows(pairs_of(own_examples))
    cross_windows = model.windows(pairs_of(cross_examples))
    if cached is not None:
        log.info("calibrate: reusing the logits in %s (same served file, sha256 %s...)", cache, key["file_sha256"][:12])
        own_logits, cross_logits = cached
    else:
        own_logits, cross_logits = model.logits(own_windows), model.logits(cross_windows)
        if cache is not None:
            write_logits(cache, key, (own_examples, own_logits), (cross_examples, cross_logits))
    trim, top_n = model.manifest.trim_suffixes, model.config.top_n
    return HeldOut(
        outcomes(own_examples, own_windows, own_logits, trim, top_n=top_n, metric=metric),
        outcomes(cross_examples, cross_windows, cross_logits, trim, top_n=top_n, metric=metric),
        label,
        served_by(model),
    )


def outcomes(
    examples: Sequence[Example],
    windows: Sequence[Sequence[Window]],
    logits: Logits,
    trim_suffixes: Sequence[str],
    max_answer_length: int = DecodeOptions.max_answer_length,  # the API's default
    top_n: int = ModelConfig.top_n,  # the service's default
    metric: Metric = CALIBRATION_METRIC,
) -> list[Outcome]:
    """Each example decoded from its windows' logits as the service decodes a request with default options, but
    keeping every candidate (`allow_overlap`, no top_k cut): their logits are what the ScoreMap sees, and the
    first is the answer the service returns. Scored by `metric`."""
    out = []
    for e, ws, lg in zip(examples, windows, logits, strict=True):
        if [len(w) for w in ws] != [len(s) for s, _ in lg]:
            raise ValueError(f"{e.id}: logits do not match this tokenizer's windows")
        d = decode_passages(
            [PassageLogits(e.context, ws, [s for s, _ in lg], [t for _, t in lg])],
            top_k=ALL_CANDIDATES,
            max_answer_length=max_answer_length,
            top_n=top_n,
            trim_suffixes=trim_suffixes,
            allow_overlap=True,
        )
        text = d.answers[0].text if d.answers else ""
        gold = [t for t, _ in e.answers]
        out.append(
            Outcome(
                np.array([a.logit for a in d.answers], dtype=np.float64),
                d.null_logit,
                text,
                exact_match(text, gold, metric) if gold else 0.0,
                f1(text, gold, metric) if gold else 0.0,
                e.title,
            )
        )
    return out


# ---------------------------------------------------------------- the logits cache


def _flat(prefix: str, examples: Sequence[Example], logits: Logits) -> dict[str, np.ndarray]:
    flat = [pair for per in logits for pair in per]
    return {
        f"{prefix}ids": np.array([e.id for e in examples]),
        f"{prefix}windows_per_example": np.array([len(per) for per in logits]),
        f"{prefix}lengths": np.array([len(s) for s, _ in flat]),
        f"{prefix}start": np.concatenate([s for s, _ in flat]).astype(np.float32),
        f"{prefix}end": np.concatenate([e for _, e in flat]).astype(np.float32),
    }


def _unflat(z: Any, prefix: str) -> tuple[list[str], Logits]:
    counts, lengths = z[f"{prefix}windows_per_example"], z[f"{prefix}lengths"]
    starts = np.split(z[f"{prefix}start"], np.cumsum(lengths)[:-1])
    ends = np.split(z[f"{prefix}end"], np.cumsum(lengths)[:-1])
    out, pos = [], 0
    for n in counts:
        out.append(list(zip(starts[pos : pos + n], ends[pos : pos + n], strict=True)))
        pos += n
    return [str(i) for i in z[f"{prefix}ids"]], out


def write_logits(
    path: Path, key: dict[str, Any], own: tuple[Sequence[Example], Logits], cross: tuple[Sequence[Example], Logits]
) -> None:
    """own/ and cross/ logits with the key they are valid for, whole or not at all: a rerun reuses what it finds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), **_flat("own/", *own), **_flat("cross/", *cross))
    tmp.replace(path)  # atomic: a write cut short leaves no file a rerun would trust


def read_logits(
    path: Path, key: dict[str, Any], own: Sequence[Example], cross: Sequence[Example]
) -> tuple[Logits, Logits] | None:
    """The cached (own, cross) logits when `path` holds them for `key` and these questions; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["key"])) != key:
                log.info("calibrate: %s holds another served file's logits; running the questions again", path)
                return None
            ids_own, own_logits = _unflat(z, "own/")
            ids_cross, cross_logits = _unflat(z, "cross/")
    except (OSError, ValueError, KeyError) as e:
        log.warning("calibrate: cannot read %s (%s); running the questions again", path, e)
        return None
    if ids_own != [e.id for e in own] or ids_cross != [e.id for e in cross]:
        log.info("calibrate: %s holds other questions' logits; running the questions again", path)
        return None
    return own_logits, cross_logits


# ---------------------------------------------------------------- the fit


def questions(own: Sequence[Outcome]) -> list[Question]:
    """The answerable outcomes as score_map's questions; articles numbered by their titles."""
    article = {t: i for i, t in enumerate(dict.fromkeys(o.title for o in own))}
    return [Question(o.logits, o.exact > 0.5, o.margin, article[o.title]) for o in own]


def margins(outcomes: Sequence[Outcome]) -> np.ndarray:
    return np.array([o.margin for o in outcomes], dtype=np.float64)


def fit_score_map(held: HeldOut) -> tuple[ScoreMap, dict[str, Any]]:
    """The rule's choice of span map, fitted on every question, with the null map: the map and the manifest's
    `score_map` (app.engine.bundle.ScoreMapSpec, with the rule's record)."""
    qs = questions(held.own)
    choice = choose(qs)
    m = fit(str(choice["chosen"]), qs, null=fit_null(margins(held.own), margins(held.cross)))
    spec = {
        "kind": m.kind,
        "params": list(m.params),
        "null": list(m.null),
        "fitted_on": held.articles,
        "held_out": "articles the shipped model never trained on, run through its served file "
        f"({held.served_by['file']}, {held.served_by['runtime']})",
        **choice,
    }
    return m, spec


def legacy_fields(m: ScoreMap) -> dict[str, Any]:
    """What servers from before `score_map` read: the Platt (a, b) when the map is Platt's, else the identity, and
    the margin where P(no answer) = 0.5, past which their null answer wins. A null map that falls with the margin
    (alpha <= 0: the model does not tell its own paragraphs from other articles') has no such margin; those servers
    then keep the manifest's default, 0, and the record says so."""
    alpha, beta = m.null
    fields: dict[str, Any] = {"score_calibration": list(m.params) if m.kind == "platt" else [1.0, 0.0]}
    if alpha > 0:
        return fields | {"null_threshold": -beta / alpha}
    log.warning(
        "calibrate: P(no answer) falls with the null margin (alpha %.3g): no null_threshold expresses it", alpha
    )
    return fields | {
        "null_threshold": 0.0,
        "null_threshold_note": f"alpha {alpha:.3g} <= 0: P(no answer) does not rise with the null margin, so no "
        "threshold expresses the null map; 0 is the manifest's default",
    }


def fit_held_out(held: HeldOut, metric: Metric) -> tuple[dict[str, Any], dict[str, Any], ScoreMap]:
    """(the calibration record, the manifest's score_map, the map) from a held-out run."""
    m, spec = fit_score_map(held)
    record = {
        "fitted_on": held.articles,
        "metric": metric,
        "served_by": held.served_by,
        **measure(held.own, held.cross, m),
        **legacy_fields(m),
    }
    return record, spec, m


def fit_bundle(
    bundle_dir: Path,
    data: str,
    articles: str,
    work: Path,
    threads: int | None = None,
    metric: Metric = CALIBRATION_METRIC,
    variant: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bundle's score map, fitted on `articles` of `data` (which its model must never have trained on) through
    the file the CPU service picks (or `variant`); returns (the calibration record, the manifest's score_map).
    work/served_logits.npz caches the logits, work/reliability_dev.png shows the fit."""
    pairs = held_out_pairs(data, articles)  # a bad file or range fails before the bundle is opened
    model = open_served(bundle_dir, threads, variant)
    held = run_served(model, pairs, f"{Path(data).name} articles {articles}", metric, cache=work / "served_logits.npz")
    record, spec, m = fit_held_out(held, metric)
    log.info("calibration: %s", {"score_map": {k: spec[k] for k in ("kind", "params", "null", "chosen")}, **record})
    reliability_plot(held.own, m, work / "reliability_dev.png", f"fitted on {held.articles}")
    return record, spec


# ---------------------------------------------------------------- what a map does


def top_probability(m: ScoreMap, o: Outcome) -> float:
    """The top answer's score with default options: the probability that it is exactly the answer, given that the
    passage holds one."""
    return float(m.spans(o.logits, o.margin)[0]) if len(o.logits) else 0.0


def answers(m: ScoreMap, o: Outcome) -> bool:
    """Whether a request with allow_no_answer gets an answer: its best one's score, (1 - P0) * its span probability,
    must exceed P0, the probability of no answer (app.engine.spans.decode_passages)."""
    p0 = m.no_answer(o.margin)
    return bool(len(o.logits)) and (1 - p0) * top_probability(m, o) > p0


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


def ece_floor(scores: np.ndarray, bins: int = BINS, draws: int = 400, seed: int = 0) -> dict[str, float]:
    """The ECE that perfectly calibrated scores would still show on this many questions: the mean and the
    90th percentile over outcomes drawn as Bernoulli(score). A measured ECE near it is sampling noise."""
    rng = np.random.default_rng(seed)
    draws_ece = [ece(scores, (rng.random(len(scores)) < scores).astype(float), bins) for _ in range(draws)]
    return {"mean": float(np.mean(draws_ece)), "p90": float(np.quantile(draws_ece, 0.9))}


def measure(own: Sequence[Outcome], cross: Sequence[Outcome], m: ScoreMap, bins: int = BINS) -> dict[str, Any]:
    """What `m` does on these questions: accuracy with and without abstention, abstention on each set, how well the
    null margin separates them (AUROC), and the top score's ECE, sharpness and log loss, before (the raw softmax
    share) and after the map."""
    correct = np.array([o.exact for o in own])
    f1s = np.array([o.f1 for o in own])
    raw = np.array([top_probability(ScoreMap(), o) for o in own])
    mapped = np.array([top_probability(m, o) for o in own])
    answered = np.array([answers(m, o) for o in own])
    abstain_cross = np.array([not answers(m, o) for o in cross])

    def sharp(s: np.ndarray) -> dict[str, float]:
        high = s > 0.9
        return {
            "share_above_0.9": float(high.mean()),
            "accuracy_above_0.9": float(correct[high].mean()) if high.any() else 0.0,
        }

    return {
        "n_answerable": len(own),
        "n_cross_article": len(cross),
        "em_f1_no_abstention": [100 * float(correct.mean()), 100 * float(f1s.mean())],
        # allow_no_answer: an abstention on an answerable question scores 0
        "em_f1_with_abstention": [100 * float((correct * answered).mean()), 100 * float((f1s * answered).mean())],
        "answered_share": float(answered.mean()),
        "cross_article_abstain_share": float(abstain_cross.mean()),
        "auroc_null_margin": auroc(margins(own), margins(cross)),
        "ece_before": ece(raw, correct, bins),
        "ece_after": ece(mapped, correct, bins),
        "ece_floor_after": ece_floor(mapped, bins),
        "sharpness_before": sharp(raw),
        "sharpness_after": sharp(mapped),
        "log_loss_before": log_loss(raw, correct),
        "log_loss_after": log_loss(mapped, correct),
        "score_map": {"kind": m.kind, "params": list(m.params), "null": list(m.null)},
    }


def reliability_plot(own: Sequence[Outcome], m: ScoreMap, path: Path, title: str, bins: int = BINS) -> None:
    """Accuracy against mean top score per bin: the raw share, and the map."""
    import matplotlib  # noqa: PLC0415 - export extra, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - export extra, and after matplotlib.use

    correct = np.array([o.exact for o in own])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    params = ", ".join(f"{p:.2f}" for p in m.params)
    for smap, label, color in (
        (ScoreMap(), "raw share", "tab:red"),
        (m, f"{m.kind}" + (f" ({params})" if params else ""), "tab:blue"),
    ):
        s = np.array([top_probability(smap, o) for o in own])
        idx = np.minimum((s * bins).astype(int), bins - 1)
        xs, ys = [], []
        for b in range(bins):
            sel = idx == b
            if sel.sum() >= 5:
                xs.append(s[sel].mean())
                ys.append(correct[sel].mean())
        ax.plot(xs, ys, "o-", color=color, label=f"{label}, ECE {ece(s, correct, bins):.3f}")
    ax.set_xlabel("top answer's score")
    ax.set_ylabel("share exactly right")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def measure_bundle(
    bundle_dir: Path, data: str, articles: str, out: Path, threads: int | None = None, metric: Metric | None = None
) -> dict[str, Any]:
    """A bundle's figures on `articles` (the test split) with its own map, through the file the CPU service picks;
    writes calibration_test.json and reliability_test.png into `out`. Exact match is by `metric`, by default the
    one the bundle's map was fitted with."""
    pairs = held_out_pairs(data, articles)  # a bad file or range fails before the bundle is opened
    model = open_served(bundle_dir, threads)
    fitted_with = model.manifest.calibration.get("metric", CALIBRATION_METRIC)
    metric = metric or next((x for x in METRICS if x == fitted_with), CALIBRATION_METRIC)
    held = run_served(model, pairs, f"{Path(data).name} articles {articles}", metric)
    result = {
        "bundle": str(bundle_dir),
        "measured_on": held.articles,
        "metric": metric,
        "served_by": held.served_by,
        **measure(held.own, held.cross, model.score_map),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_test.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    reliability_plot(held.own, model.score_map, out / "reliability_test.png", f"articles {articles}")
    return result
