"""SQuAD v1.1 (token F1) and KorQuAD 1.0 (character F1) metrics, equal to the official evaluation scripts; a
SQuAD 2.0 question without an answer is scored as the v2.0 script scores it."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from model_export.data import parse_articles

Metric = Literal["squad", "korquad"]
METRICS: tuple[Metric, ...] = ("squad", "korquad")
# what makes a top answer right when calibrating, unless told: the default bundle is Korean, and a calibration
# record written before the choice existed was fitted with it
CALIBRATION_METRIC: Metric = "korquad"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# The KorQuAD script turns these into spaces before anything else (so they also split words).
_KORQUAD_SYMBOLS = re.compile("['\"《》<>〈〉()\u2018\u2019]")  # \u2018 \u2019: curly single quotes


def _white_space_fix(text: str) -> str:
    return " ".join(text.split())


def _remove_punc(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCTUATION)


def normalize_squad(s: str) -> str:
    """SQuAD v1.1: lower-case, drop ASCII punctuation, drop a/an/the, collapse whitespace (in that order)."""
    return _white_space_fix(_ARTICLES.sub(" ", _remove_punc(s.lower())))


def normalize_korquad(s: str) -> str:
    """KorQuAD 1.0: quotes/brackets to spaces, lower-case, drop ASCII punctuation, collapse whitespace."""
    return _white_space_fix(_remove_punc(_KORQUAD_SYMBOLS.sub(" ", s).lower()))


def _overlap_f1(prediction: list[str], truth: list[str]) -> float:
    num_same = sum((Counter(prediction) & Counter(truth)).values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(truth)
    return (2 * precision * recall) / (precision + recall)


def squad_f1(prediction: str, ground_truth: str) -> float:
    return _overlap_f1(normalize_squad(prediction).split(), normalize_squad(ground_truth).split())


def korquad_f1(prediction: str, ground_truth: str) -> float:
    # characters of the normalized words: spaces between words do not count
    return _overlap_f1(
        list("".join(normalize_korquad(prediction).split())), list("".join(normalize_korquad(ground_truth).split()))
    )


def squad_exact(prediction: str, ground_truth: str) -> float:
    return float(normalize_squad(prediction) == normalize_squad(ground_truth))


def korquad_exact(prediction: str, ground_truth: str) -> float:
    return float(normalize_korquad(prediction) == normalize_korquad(ground_truth))


_FUNCTIONS: dict[Metric, tuple[Callable[[str, str], float], Callable[[str, str], float]]] = {
    "squad": (squad_exact, squad_f1),
    "korquad": (korquad_exact, korquad_f1),
}


_NORMALIZE: dict[Metric, Callable[[str], str]] = {"squad": normalize_squad, "korquad": normalize_korquad}


def _abstained(prediction: str, metric: Metric) -> float:
    # SQuAD 2.0's question without an answer: its official script scores only an empty prediction right, for
    # both metrics; v1.1 and KorQuAD 1.0 have no such questions
    return float(not _NORMALIZE[metric](prediction))


def exact_match(prediction: str, ground_truths: Sequence[str], metric: Metric) -> float:
    """Best exact match (0 or 1) over the ground truths; with none (unanswerable), 1 for an abstention."""
    if not ground_truths:
        return _abstained(prediction, metric)
    return max(_FUNCTIONS[metric][0](prediction, t) for t in ground_truths)


def f1(prediction: str, ground_truths: Sequence[str], metric: Metric) -> float:
    """Best F1 (0..1) over the ground truths; with none (unanswerable), 1 for an abstention."""
    if not ground_truths:
        return _abstained(prediction, metric)
    return max(_FUNCTIONS[metric][1](prediction, t) for t in ground_truths)


def score(
    questions: Iterable[tuple[str, Sequence[str]]], predictions: Mapping[str, str], metric: Metric
) -> dict[str, float]:
    """(id, ground truths) in dataset order + {id: text} -> EM and F1 on a 0-100 scale.

    Sums in dataset order and scales at the end, as the official scripts do, so the floats agree to the
    last digit. A question without a prediction scores 0 but still counts.
    """
    if metric not in _FUNCTIONS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    em_sum = f1_sum = 0.0
    total = 0
    for qid, truths in questions:
        total += 1
        if qid not in predictions:
            continue
        em_sum += exact_match(predictions[qid], truths, metric)
        f1_sum += f1(predictions[qid], truths, metric)
    if total == 0:
        raise ValueError("no questions to score")
    return {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total}


def dataset_questions(data: list[dict[str, object]], articles: str | None = None) -> list[tuple[str, list[str]]]:
    """(id, answer texts) of every question in the selected articles of a SQuAD-format `data` list."""
    out: list[tuple[str, list[str]]] = []
    for a in parse_articles(articles, len(data)):
        for para in data[a]["paragraphs"]:  # type: ignore[index]
            for qa in para["qas"]:
                out.append((qa["id"], [x["text"] for x in qa["answers"]]))
    return out


def score_files(
    dataset_path: str | Path, predictions_path: str | Path, metric: Metric, articles: str | None = None
) -> dict[str, float]:
    """Score a `{id: text}` predictions file against a SQuAD-format dataset file (all articles by default)."""
    return score(*questions_and_predictions(dataset_path, predictions_path, articles), metric)


def questions_and_predictions(
    dataset_path: str | Path, predictions_path: str | Path, articles: str | None
) -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """(id, answer texts) of the selected articles' questions, and the `{id: text}` predictions file."""
    data = json.loads(Path(dataset_path).read_text(encoding="utf-8"))["data"]
    return dataset_questions(data, articles), json.loads(Path(predictions_path).read_text(encoding="utf-8"))
