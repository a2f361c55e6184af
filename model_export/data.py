"""SQuAD-format loading, article splits and training features (windows from app.engine.windows)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.engine.windows import PairTokenizer, Window, WindowSpec, encode_windows, label_window


@dataclass(frozen=True)
class Example:
    id: str
    title: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, answer_start) pairs; the first one trains


@dataclass(frozen=True)
class Feature:
    example_index: int
    window: Window
    start_position: int
    end_position: int


class ArticleRangeError(ValueError):
    """An article range that selects no article of the data file."""


def article_count(path: str | Path) -> int:
    """How many articles a SQuAD-format file holds: what article ranges are parsed against."""
    return len(json.loads(Path(path).read_text(encoding="utf-8"))["data"])


def parse_articles(spec: str | None, n_articles: int) -> list[int]:
    """'0:112' -> 0..111; '0:28,56:112' -> a union, in order; None -> every article. Ends work like slices,
    but a part that selects no article is an error: a range past the end must not quietly become no data."""
    if spec is None:
        return list(range(n_articles))
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition(":")
        if sep:
            picked = list(range(n_articles)[slice(int(lo) if lo else None, int(hi) if hi else None)])
        else:
            i = int(lo)
            picked = [i % n_articles] if -n_articles <= i < n_articles else []
        if not picked:
            raise ArticleRangeError(f"articles {spec!r}: {part.strip()!r} selects none of the {n_articles} articles")
        out += picked
    return out


def articles_spec(articles: Sequence[int]) -> str:
    """The shortest parse_articles spec for these articles: [0, 1, 2, 5] -> '0:3,5:6'."""
    runs: list[list[int]] = []
    for a in articles:
        if runs and a == runs[-1][1]:
            runs[-1][1] = a + 1
        else:
            runs.append([a, a + 1])
    return ",".join(f"{lo}:{hi}" for lo, hi in runs)


def load_squad(path: Path, articles: str | None = None) -> list[Example]:
    """Read a SQuAD v1.1/v2 JSON file, keeping the articles selected by `articles`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    out: list[Example] = []
    for a in parse_articles(articles, len(data)):
        article = data[a]
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = tuple((x["text"], int(x["answer_start"])) for x in qa.get("answers", []))
                out.append(Example(qa["id"], article.get("title", ""), qa["question"], para["context"], answers))
    return out


def load_examples(source: str, articles: str | None = None) -> list[Example]:
    """The selected articles of a SQuAD-format JSON file."""
    return load_squad(Path(source), articles)


def iter_windows(
    tokenizer: PairTokenizer, examples: list[Example], spec: WindowSpec, chunk: int = 256
) -> Iterator[tuple[int, list[Window]]]:
    """(example index, its windows), tokenizing in chunks."""
    for i in range(0, len(examples), chunk):
        part = examples[i : i + chunk]
        for j, windows in enumerate(encode_windows(tokenizer, [(e.question, e.context) for e in part], spec)):
            yield i + j, windows


def training_features(tokenizer: PairTokenizer, examples: list[Example], spec: WindowSpec) -> list[Feature]:
    """Every window of every example, labelled with its answer tokens or CLS (0, 0)."""
    features: list[Feature] = []
    for idx, windows in iter_windows(tokenizer, examples, spec):
        if not examples[idx].answers:  # unanswerable: every window points at CLS
            features += [Feature(idx, w, 0, 0) for w in windows]
            continue
        text, start = examples[idx].answers[0]
        for w in windows:
            s, e = label_window(w, start, start + len(text))
            features.append(Feature(idx, w, s, e))
    return features


def paragraphs_by_title(examples: list[Example]) -> dict[str, list[str]]:
    """Each article's distinct paragraphs, in order of first appearance."""
    by_title: dict[str, list[str]] = {}
    for e in examples:
        paras = by_title.setdefault(e.title, [])
        if e.context not in paras:
            paras.append(e.context)
    return by_title


def negative_examples(examples: list[Example], per_question: float, rng: random.Random) -> list[Example]:
    """Unanswerable pairs from `examples` alone: a question over another paragraph that lacks its answers.

    Half come from the question's own article (same topic, the hard case a retriever produces), half from
    another article. `per_question` may be fractional: 0.5 pairs every other question.
    """
    by_title = paragraphs_by_title(examples)
    titles = list(by_title)
    out: list[Example] = []
    for e in examples:
        n = int(per_question) + (rng.random() < per_question % 1)
        for k in range(n):
            same = rng.random() < 0.5 and len(by_title[e.title]) > 1
            pool = by_title[e.title] if same else by_title[rng.choice([t for t in titles if t != e.title] or titles)]
            context = rng.choice(pool)
            if context == e.context or any(text in context for text, _ in e.answers):
                continue
            out.append(Example(f"{e.id}-neg{k}", e.title, e.question, context, ()))
    return out


def cross_article_pairs(examples: list[Example], rng: random.Random) -> list[Example]:
    """Each question over a paragraph of another article: what a retriever's miss looks like. Never answerable."""
    by_title = paragraphs_by_title(examples)
    titles = list(by_title)
    if len(titles) < 2:
        raise ValueError("cross-article pairs need at least two articles")
    out = []
    for e in examples:
        other = rng.choice([t for t in titles if t != e.title])
        out.append(Example(f"{e.id}-cross", other, e.question, rng.choice(by_title[other]), ()))
    return out
