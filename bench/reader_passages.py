"""Reader stage behind a retriever: does the gold paragraph win among distractors? (KorQuAD test split)

    python -m bench.reader_passages --questions 100 --distractors 10

Each sampled test question (articles 112-139) is paired with its gold paragraph and `--distractors`
paragraphs drawn from *other* test articles (seeded), shuffled together, and sent as one
question over many passages (as POST /read sends it) to ServedModel, the service's own engine. Reports how often the top
answer's passage is the gold one, and how often its text is a gold answer, against the gold paragraph
alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/reader_passages.py` finds bench

from app.engine.interface import QARequest
from bench.common import DATA, REPO, TEST_ARTICLES, open_model, squad_articles


@dataclass(frozen=True)
class Case:
    question: str
    passages: tuple[str, ...]
    gold: int  # index of the gold paragraph in passages
    answers: tuple[str, ...]  # gold answer texts


def make_cases(data: list[dict], n: int, distractors: int, seed: int) -> list[Case]:
    """`n` test questions (seeded sample), each with its paragraph among `distractors` from other test articles."""
    rng = random.Random(seed)
    questions = [(a, p["context"], qa) for a in TEST_ARTICLES for p in data[a]["paragraphs"] for qa in p["qas"]]
    paragraphs = [(a, p["context"]) for a in TEST_ARTICLES for p in data[a]["paragraphs"]]
    cases = []
    for a, gold, qa in rng.sample(questions, n):
        others = rng.sample([c for b, c in paragraphs if b != a], distractors)
        passages = [*others, gold]
        rng.shuffle(passages)
        answers = tuple(x["text"] for x in qa["answers"])
        cases.append(Case(qa["question"], tuple(passages), passages.index(gold), answers))
    return cases


def run(model_dir: Path, cases: list[Case], threads: int) -> dict[str, object]:
    model = open_model(model_dir, threads=threads)
    passage_hits = text_hits = alone_hits = windows = 0
    t0 = time.perf_counter()
    for case in cases:
        [result] = model.answer([QARequest(case.question, case.passages)])
        [alone] = model.answer([QARequest(case.question, (case.passages[case.gold],))])
        top = result.answers[0]
        passage_hits += top.passage == case.gold
        text_hits += top.passage == case.gold and top.text in case.answers
        alone_hits += bool(alone.answers) and alone.answers[0].text in case.answers
        windows += sum(len(ws) for ws in model.windows([(case.question, p) for p in case.passages]))
    n = len(cases)
    return {
        "questions": n,
        "passages_per_question": len(cases[0].passages),
        "top1_passage_accuracy": round(passage_hits / n, 4),
        "top1_exact_match_among_distractors": round(text_hits / n, 4),
        "top1_exact_match_gold_alone": round(alone_hits / n, 4),
        "windows_per_question": round(windows / n, 2),
        "model": model.manifest.name,
        "variant": model.variant,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--distractors", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads; 0 = the CPU quota")
    args = ap.parse_args()
    data = squad_articles(args.data)
    cases = make_cases(data, args.questions, args.distractors, args.seed)
    print(json.dumps(run(args.model, cases, args.threads)))


if __name__ == "__main__":
    main()
