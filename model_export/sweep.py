"""Tune the training recipe on a dev slice of the training articles: one run per trial, scored every epoch.

    python -m model_export sweep configs/korquad-e5-small.toml --trials configs/sweep-korquad.toml --out runs/sweep

Each trial overrides the build config's [train] (and [windows]) values, trains on `fit_articles` and is
scored on `dev_articles` after every epoch. The test split is never read. Results are appended to
OUT/results.jsonl as each trial ends, so an interrupted sweep keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from model_export.config import BuildConfig, ConfigError, load_build_config

log = logging.getLogger(__name__)


def trial_config(cfg: BuildConfig, base_model: str, out: Path, fit: str, dev: str, overrides: dict[str, Any]):  # noqa: ANN201
    from model_export.train import TrainConfig

    values: dict[str, Any] = {**cfg.windows.model_dump(), **cfg.train.model_dump(), **overrides}
    return TrainConfig(
        base_model=base_model,
        train_file=cfg.data.file,
        output_dir=str(out),
        train_articles=fit,
        eval_articles=dev,
        **{k: v for k, v in values.items() if k not in {"train_articles", "eval_articles"}},
    )


def run_sweep(
    cfg: BuildConfig, base_model: str, trials_file: Path, out: Path, budget_s: float | None = None
) -> list[dict[str, Any]]:
    """Train and score every trial in order; skip the rest once `budget_s` would be exceeded."""
    from model_export.pipeline import check_splits

    spec = tomllib.loads(trials_file.read_text(encoding="utf-8"))
    fit, dev = spec["fit_articles"], spec["dev_articles"]
    check_splits(cfg, {"sweep": (fit, dev)})  # tuning must never read the test split
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    per_epoch_s: float | None = None
    for trial in spec["trial"]:
        if "ensemble" in trial:
            row = ensemble_row(cfg, trial, out, dev)
        else:
            overrides = dict(trial.get("train", {}))
            if "teachers" in overrides:  # trial names, as run dirs of this sweep
                overrides["teachers"] = [str(run_dir_of(out, name) / "final") for name in overrides["teachers"]]
            epochs = float(overrides.get("epochs", cfg.train.model_dump()["epochs"]))
            elapsed = time.monotonic() - t_start
            if budget_s and per_epoch_s and elapsed + per_epoch_s * epochs > budget_s:
                log.info("sweep: skipping %r, %.0f s left of the budget", trial["name"], budget_s - elapsed)
                continue
            row = train_row(cfg, base_model, trial["name"], run_dir_of(out, trial["name"]), fit, dev, overrides)
            per_epoch_s = max(per_epoch_s or 0.0, row["seconds"] / max(epochs, 0.5))
        results.append(row)
        with (out / "results.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        log.info("sweep: %s -> %s", trial["name"], row["final"])
    (out / "results.md").write_text(results_table(results), encoding="utf-8")
    return results


def train_row(
    cfg: BuildConfig, base_model: str, name: str, run_dir: Path, fit: str, dev: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Train one trial and return its results row (dev scores by epoch, from its training.json)."""
    from model_export.train import train

    t0 = time.monotonic()
    final = train(trial_config(cfg, base_model, run_dir, fit, dev, overrides))
    seconds = time.monotonic() - t0
    record = json.loads((final / "training.json").read_text(encoding="utf-8"))
    history = record.get("dev", [])
    return {
        "name": name,
        "overrides": overrides,
        "fit_articles": fit,
        "dev_articles": dev,
        "dir": str(final),
        "seconds": round(seconds, 1),
        "windows": record.get("windows"),
        "dev": history,
        "final": history[-1] if history else None,
    }


def run_dir_of(out: Path, name: str) -> Path:
    """A trial's run dir: the label before the colon of its name ("T1: seed 1" -> OUT/T1)."""
    return out / name.split(":", maxsplit=1)[0].strip().replace(" ", "-")


def ensemble_row(cfg: BuildConfig, trial: dict[str, Any], out: Path, dev_articles: str) -> dict[str, Any]:
    """Score the mean logits of finished trials on the dev slice: what distilling them could reach."""
    import numpy as np

    from app.engine.windows import pad_token_id
    from model_export.data import load_examples
    from model_export.evaluate import WindowPredictor, WindowSettings, evaluate_predictor, open_checkpoint

    w = cfg.windows
    windows = WindowSettings(w.max_seq_length, w.doc_stride, w.max_query_length)
    members = [open_checkpoint(run_dir_of(out, n) / "final", windows, 64, 4) for n in trial["ensemble"]]
    fns = [m.logits_fn for m in members]

    def mean_logits(batch):  # noqa: ANN001, ANN202
        outs = [fn(batch) for fn in fns]
        return np.mean([s for s, _ in outs], 0), np.mean([e for _, e in outs], 0)

    tok = members[0].tokenizer
    predictor = WindowPredictor(tok, mean_logits, windows, pad_token_id(tok), 64)
    result = evaluate_predictor(predictor, load_examples(cfg.data.file, dev_articles))
    final = {
        "korquad_f1": result["korquad"]["f1"],
        "korquad_em": result["korquad"]["exact_match"],
        "squad_f1": result["squad"]["f1"],
    }
    return {
        "name": trial["name"],
        "overrides": {"ensemble": trial["ensemble"]},
        "dev": [final],
        "final": final,
        "seconds": 0,
        "ensemble": True,
    }


def results_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| trial | overrides | dev KorQuAD F1 by epoch | final EM / F1 | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        curve = " → ".join(f"{h['korquad_f1']:.1f}" for h in r["dev"])
        fin = r["final"] or {}
        em_f1 = f"{fin.get('korquad_em', 0):.2f} / {fin.get('korquad_f1', 0):.2f}" if fin else "-"
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        lines.append(f"| {r['name']} | {over} | {curve} | {em_f1} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def best_trial(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial whose last epoch scored highest: the model a full run of that recipe would ship."""
    scored = [r for r in results if r["final"] and not r.get("ensemble")]
    if not scored:
        raise ValueError("no trial finished with a dev score")
    return max(scored, key=lambda r: r["final"]["korquad_f1"])


def _sweep_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_build_config(Path(args.config))
        results = run_sweep(cfg, args.base, Path(args.trials), Path(args.out), args.budget_s)
    except ConfigError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    print(results_table(results))
    best = best_trial(results)
    print(f"best: {best['name']} {json.dumps(best['overrides'])} -> {best['final']}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help="tune [train] values on a dev slice of the training articles")
    p.add_argument("config", help="TOML build config whose [train] and [windows] the trials override")
    p.add_argument("--trials", required=True, help="TOML: fit_articles, dev_articles and [[trial]] tables")
    p.add_argument("--base", required=True, help="base encoder dir (e.g. WORK_DIR/base from a build)")
    p.add_argument("--out", required=True, help="one run dir per trial, results.jsonl and results.md")
    p.add_argument("--budget-s", type=float, default=None, help="skip trials that would end past this many seconds")
    p.set_defaults(func=_sweep_command)
