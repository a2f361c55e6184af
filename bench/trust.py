"""Can a pipeline trust what the service says? The score's calibration, distinct answers and abstention, measured
through a running service on the KorQuAD test split (articles 112-139).

    python bench/trust.py                                  # the shipped bundle, docs/calibration_test.png
    python bench/trust.py --bundle runs/my-bundle --plot /tmp/trust.png --articles 112:140

It serves the bundle twice, once as shipped and once with its score map set to the identity (the raw softmax share,
for comparison), and sends every test question:
- over its own paragraph, top_k 5, default options: the top-1 score against KorQuAD's exact match (ECE, 10 bins;
  sharpness), EM/F1 with the official script, and whether any two answers of a response overlap;
- with allow_no_answer over its own paragraph (still answered?) and over a paragraph of another test article (does
  it abstain?), checking that no_answer_score is always a number and never above the top answer's score.
Prints one JSON object and writes the reliability diagram of both scores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from matplotlib.figure import Figure  # every run draws the diagram

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/trust.py` finds the bench package

from bench.common import DATA, REPO, TEST_SPEC, server
from model_export.data import Example, cross_article_pairs, load_squad
from model_export.metrics import exact_match, f1
from model_export.score_map import ece

BATCH = 16  # items per /batch_answer call
CLIENTS = 2


async def ask(base: str, examples: Sequence[Example], **options: Any) -> list[dict[str, Any]]:
    """Each example's /answer response, sent as batches of BATCH items by CLIENTS concurrent clients."""
    chunks = [examples[i : i + BATCH] for i in range(0, len(examples), BATCH)]
    results: list[list[dict[str, Any]]] = [[] for _ in chunks]
    queue = list(enumerate(chunks))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            i, chunk = queue.pop(0)
            items = [{"question": e.question, "context": e.context, **options} for e in chunk]
            r = await http.post(base + "/batch_answer", json={"items": items})
            r.raise_for_status()
            results[i] = r.json()["results"]

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return [r for chunk in results for r in chunk]


def overlapping(answers: Sequence[dict[str, Any]]) -> bool:
    spans = [(a["start"], a["end"]) for a in answers]
    return any(s1 < e2 and s2 < e1 for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1 :])


def sharpness(scores: np.ndarray, right: np.ndarray, above: float = 0.9) -> dict[str, float | None]:
    m = scores > above
    return {"share_above_0.9": float(m.mean()), "accuracy_above_0.9": float(right[m].mean()) if m.any() else None}


def measure(base: str, own: Sequence[Example], cross: Sequence[Example]) -> dict[str, Any]:
    plain = asyncio.run(ask(base, own, top_k=5))
    gated_own = asyncio.run(ask(base, own, top_k=5, allow_no_answer=True))
    gated_cross = asyncio.run(ask(base, cross, top_k=5, allow_no_answer=True))
    golds = [[t for t, _ in e.answers] for e in own]
    tops = [r["answers"][0] if r["answers"] else None for r in plain]
    texts = [t["text"] if t else "" for t in tops]
    scores = np.array([t["score"] if t else 0.0 for t in tops])
    right = np.array([exact_match(p, g, "korquad") for p, g in zip(texts, golds, strict=True)])
    gated = gated_own + gated_cross
    numbers = [r["no_answer_score"] for r in gated]
    return {
        "questions": len(own),
        "em": 100 * float(right.mean()),
        "f1": 100 * float(np.mean([f1(p, g, "korquad") for p, g in zip(texts, golds, strict=True)])),
        "ece_top1": ece(scores, right),
        "mean_top1_score": float(scores.mean()),
        "sharpness": sharpness(scores, right),
        "responses_with_overlapping_answers": sum(overlapping(r["answers"]) for r in plain),
        "answers_per_response_top_k_5": float(np.mean([len(r["answers"]) for r in plain])),
        "no_answer_score_always_a_number": all(isinstance(x, float | int) for x in numbers),
        "top_answer_below_no_answer": sum(
            bool(r["answers"]) and r["answers"][0]["score"] < r["no_answer_score"] for r in gated
        ),
        "answerable_answered": float(np.mean([bool(r["answers"]) for r in gated_own])),
        "cross_article_abstained": float(np.mean([not r["answers"] for r in gated_cross])),
        "_scores": scores,
        "_right": right,
    }


def identity_copy(bundle: Path, out: Path) -> Path:
    """The bundle with its span map set to the raw share (the null map kept): what the score was before mapping."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    spec = manifest.get("score_map") or {}
    manifest["score_map"] = {"kind": "identity", "params": [], "null": spec.get("null", [1.0, 0.0])}
    manifest["score_calibration"] = [1.0, 0.0]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    return out


def reliability(rows: dict[str, dict[str, Any]], path: Path, title: str, bins: int = 10) -> None:
    fig = Figure(figsize=(5.2, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for (name, r), marker in zip(rows.items(), "os", strict=False):
        scores, right = r["_scores"], r["_right"]
        idx = np.minimum((scores * bins).astype(int), bins - 1)
        xs = [scores[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ys = [right[idx == b].mean() for b in range(bins) if (idx == b).any()]
        ax.plot(xs, ys, marker=marker, label=f"{name} (ECE {r['ece_top1']:.3f})")
    ax.set_xlabel("top-1 score (bin mean)")
    ax.set_ylabel("exactly right (KorQuAD EM)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--articles", default=TEST_SPEC)
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "calibration_test.png")
    args = ap.parse_args(argv)
    own = load_squad(args.data, args.articles)
    cross = cross_article_pairs(own, random.Random(0))
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = identity_copy(args.bundle, Path(tmp) / "raw")
        for name, bundle in (("shipped score", args.bundle), ("raw share", raw)):
            with server({"QA_MAX_BATCH_ITEMS": str(BATCH)}, str(bundle)) as (_, base):
                rows[name] = measure(base, own, cross)
    reliability(rows, args.plot, f"{args.bundle.name}: top-1 score on KorQuAD articles {args.articles}")
    print(json.dumps({k: {f: v for f, v in r.items() if not f.startswith("_")} for k, r in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
