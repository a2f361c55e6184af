"""Do two running services give the same top answer? KorQuAD test questions to both, top-1 spans compared.

    python bench/compare_services.py http://127.0.0.1:8001 http://127.0.0.1:8002 --questions 50 --min-agreement 0.9

Prints one JSON object: the share of questions whose best span (start, end) is the same on both, the largest
score difference on those, and the first disagreements. Exits 1 when the agreement is below --min-agreement.
scripts/gpu_check.sh uses it to hold the CUDA service (fp32 and fp16) to the CPU's answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/compare_services.py` finds bench

from bench.common import held_out_items


def top1(body: dict[str, Any]) -> tuple[int, int, float] | None:
    answers = body.get("answers") or []
    if not answers:
        return None
    a = answers[0]
    return int(a["start"]), int(a["end"]), float(a["score"])


def compare(url_a: str, url_b: str, items: list[dict[str, str]]) -> dict[str, Any]:
    same = 0
    max_diff = 0.0
    disagreements: list[dict[str, Any]] = []
    with httpx.Client(timeout=120) as client:
        models = [client.get(u + "/v1/models").json()["data"][0] for u in (url_a, url_b)]
        for i, item in enumerate(items):
            got = []
            for url in (url_a, url_b):
                r = client.post(url + "/answer", json=item)
                r.raise_for_status()
                got.append(top1(r.json()))
            a, b = got
            if a is not None and b is not None and a[:2] == b[:2]:
                same += 1
                max_diff = max(max_diff, abs(a[2] - b[2]))
            elif len(disagreements) < 5:
                disagreements.append({"question": i, "a": a, "b": b})
    return {
        "a": {"url": url_a, "precision": models[0]["precision"], "provider": models[0]["execution_provider"]},
        "b": {"url": url_b, "precision": models[1]["precision"], "provider": models[1]["execution_provider"]},
        "questions": len(items),
        "top1_agreement": round(same / len(items), 4) if items else None,
        "max_score_diff_when_agreeing": round(max_diff, 6),
        "first_disagreements": disagreements,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url_a")
    ap.add_argument("url_b")
    ap.add_argument("--questions", type=int, default=50, help="first N questions of the test articles")
    ap.add_argument("--min-agreement", type=float, default=0.9, help="exit 1 below this share of equal top-1 spans")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    items = held_out_items(args.questions)
    result = compare(args.url_a.rstrip("/"), args.url_b.rstrip("/"), items)
    result["min_agreement"] = args.min_agreement
    result["ok"] = result["top1_agreement"] is not None and result["top1_agreement"] >= args.min_agreement
    text = json.dumps(result, ensure_ascii=False)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
