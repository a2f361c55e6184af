"""scripts/device/gpu_train.py's out-of-fold mode on the tiny model, on a CPU, and the calibrate verb fitting
from what it returns: the plumbing a GPU call relies on, checked where there is no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from model_export.data import load_examples
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_fold_logits_come_back_and_calibrate_fits_on_every_training_question(tiny_bundle: Path, tmp_path: Path):
    hf, out = tiny_bundle.parent / "hf", tmp_path / "out"
    r = run(
        "scripts/device/gpu_train.py",
        *("--config", "configs/tiny-smoke.toml", "--base", str(hf), "--data", str(KORQUAD_DEV)),
        *("--out", str(out), "--work", str(tmp_path / "work"), "--smoke", "--no-sweep", "--no-final"),
        *("--folds", "2", "--set", 'data.train_articles="0:4"'),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    returned = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert returned == ["calibrate/fold-1-of-2/dev_logits.npz", "calibrate/fold-2-of-2/dev_logits.npz"]
    with np.load(out / "calibrate/fold-2-of-2/dev_logits.npz") as z:
        assert [str(i) for i in z["own/ids"]] == [e.id for e in load_examples(str(KORQUAD_DEV), "2:4")]

    folds = [str(out / f"calibrate/fold-{i}-of-2/dev_logits.npz") for i in (1, 2)]
    r = run(
        *("-m", "model_export", "calibrate", "--data", str(KORQUAD_DEV), "--tokenizer", str(hf)),
        *("--logits", *folds, "--articles", "0:2", "2:4", "--out", str(tmp_path / "cal")),
        *("--max-seq-length", "128", "--doc-stride", "32", "--max-query-length", "32"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert record["n_answerable"] == len(load_examples(str(KORQUAD_DEV), "0:4")) and record["fit_models"] == 2
    assert record["ece_floor_after"]["mean"] > 0
    r = run(
        *("-m", "model_export", "calibrate", "--data", str(KORQUAD_DEV), "--tokenizer", str(hf)),
        *("--logits", *folds, "--articles", "0:4", "--out", str(tmp_path / "cal2")),
    )
    assert r.returncode != 0 and "one --articles range per --logits file" in r.stderr
