"""Tune the training recipe on a dev slice of the training articles: one run per trial, scored every epoch.

    python -m model_export sweep configs/korquad-e5-small.toml --trials configs/sweep-korquad.toml --out runs/sweep

Each trial overrides the build config's [train] (and [windows]) values, trains on `fit_articles` and is
scored on `dev_articles` after every epoch. The test split is never read. Results are appended to
OUT/results.jsonl as each trial ends, so an interrupted sweep keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

from model_export.config import BuildConfig, ConfigError, TrainConfig, check_splits
from model_export.train import train

log = logging.getLogger(__name__)


def trial_config(
    cfg: BuildConfig, base_model: str, out: Path, fit: str, dev: str | None, overrides: dict[str, Any]
) -> TrainConfig:
    """The build config's [windows] and [train], with a trial's overrides, trained on `fit`, scored on `dev`."""
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
    spec = tomllib.loads(trials_file.read_text(encoding="utf-8"))
    fit, dev = spec["fit_articles"], spec["dev_articles"]
    check_splits(cfg, {"sweep": (fit, dev)})  # tuning must never read the test split
    check_trials(spec["trial"], str(trials_file))
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    per_epoch_s: float | None = None
    for trial in spec["trial"]:
        overrides = dict(trial.get("train", {}))
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


def check_trials(trials: list[dict[str, Any]], source: str) -> None:
    """ConfigError, before any training, for a trial without a name, with a key other than `name` and `train`, or
    with a `train` key TrainConfig does not have (a typo, or a removed one such as distillation's teachers)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for trial in trials:
        bad = sorted(set(trial) - {"name", "train"}) + [f"train.{k}" for k in trial.get("train", {}) if k not in fields]
        if bad or "name" not in trial:
            name = trial.get("name", "without a name")
            raise ConfigError(f"{source}: trial {name!r}: unknown keys {bad} (a trial has a name and a train table)")


def train_row(
    cfg: BuildConfig, base_model: str, name: str, run_dir: Path, fit: str, dev: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Train one trial and return its results row (dev scores by epoch, from its training.json)."""
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
    scored = [r for r in results if r["final"]]
    if not scored:
        raise ValueError("no trial finished with a dev score")
    return max(scored, key=lambda r: r["final"]["korquad_f1"])
