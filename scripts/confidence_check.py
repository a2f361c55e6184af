"""How sure of themselves several models are on the same held-out questions, and the Platt map each would fit.

A calibration map fitted on one model's scores carries over to another only if both are about as confident at
the same accuracy. The model card's out-of-fold section compares a fold model with T2 this way, on training
articles only:

    python -m scripts.confidence_check --data ../shared/data/korquad/KorQuAD_v1.0_dev.json --articles 100:112 \
        --tokenizer runs/korquad-e5-small/calibrate/fold-4-of-4/train/final --trim-suffixes <the manifest's> \
        --models runs/gpu/call2/dev_logits.npz runs/korquad-e5-small/calibrate/fold-4-of-4/train/final

Each model is a dev-logits file (`calibrate`'s npz, its answerable questions in the same order) or a PyTorch
checkpoint dir, run here on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.engine.windows import encode_windows
from model_export.calibrate import ece, fit_platt, outcomes, top_share
from model_export.checkpoint import load_tokenizer
from model_export.config import add_window_flags, window_flags
from model_export.held_out import calibration_questions, checkpoint_logits, load_logits, pairs_of


def _mean(x: np.ndarray) -> str:
    # a model that is never (or always) right leaves one group empty: print "none", not numpy's NaN and warning
    return f"{x.mean():.3f}" if len(x) else "none"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="dev_logits.npz files or PyTorch checkpoint dirs")
    p.add_argument("--data", required=True, help="SQuAD-format JSON")
    p.add_argument("--articles", required=True, help="held out from every model, e.g. 100:112")
    p.add_argument("--tokenizer", required=True, help="dir with the tokenizer all models share")
    p.add_argument("--trim-suffixes", nargs="*", default=[])
    add_window_flags(p)
    args = p.parse_args(argv)

    questions = calibration_questions(args.data, args.articles)
    w = window_flags(args)
    windows = encode_windows(load_tokenizer(args.tokenizer), pairs_of(questions), w)
    for model in map(Path, args.models):
        if model.is_dir():
            logits = checkpoint_logits(model, questions, w)
        else:
            with np.load(model) as z:
                ids, logits = load_logits(z, "own/")
            if ids != [q.id for q in questions]:
                raise SystemExit(f"{model}: its questions are not those of articles {args.articles}")
        o = outcomes(questions, windows, logits, args.trim_suffixes)
        share = np.array([top_share(x) for x in o])
        right = np.array([x.exact for x in o])
        print(
            f"{model}: n {len(o)}, EM {100 * right.mean():.2f}, F1 {100 * np.mean([x.f1 for x in o]):.2f}, "
            f"mean top share {share.mean():.3f} (right {_mean(share[right == 1])}, "
            f"wrong {_mean(share[right == 0])}), raw ECE {ece(share, right):.4f}, "
            f"Platt {np.round(fit_platt(o), 3).tolist()}"
        )


if __name__ == "__main__":
    main()
