"""scripts/device/gpu_train.py's out-of-fold mode on the tiny model, on a CPU, the calibrate verb fitting from
what it returns, and apply_delta rebuilding a checkpoint from the delta it returns: the plumbing a GPU call
relies on, checked where there is no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoConfig, BertForQuestionAnswering

from model_export.__main__ import main
from model_export.data import load_examples
from scripts.device.gpu_train import apply_delta, pack_delta
from tests.support.tiny_archs import build_checkpoint
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_fold_logits_come_back_and_calibrate_fits_on_every_training_question(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
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

    # the calibrate verb fits on what came back (run here, in this process)
    folds = [str(out / f"calibrate/fold-{i}-of-2/dev_logits.npz") for i in (1, 2)]
    calibrate = ["calibrate", "--data", str(KORQUAD_DEV), "--tokenizer", str(hf), "--logits", *folds]
    windows = ["--max-seq-length", "128", "--doc-stride", "32", "--max-query-length", "32"]
    assert main([*calibrate, "--articles", "0:2", "2:4", "--out", str(tmp_path / "cal"), *windows]) == 0
    record = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert json.loads(capsys.readouterr().out) == record
    assert record["n_answerable"] == len(load_examples(str(KORQUAD_DEV), "0:4")) and record["fit_models"] == 2
    assert record["ece_floor_after"]["mean"] > 0
    assert main([*calibrate, "--articles", "0:4", "--out", str(tmp_path / "cal2")]) != 0
    assert "one --articles range per --logits file" in capsys.readouterr().err


def test_apply_delta_turns_the_returned_delta_back_into_the_trained_checkpoint(tmp_path: Path) -> None:
    """The model card's manual step after a GPU call: the base plus the fp16 delta the call returned (pack_delta)
    is the fine-tuned QA checkpoint again, within fp16 rounding of what moved."""
    base = build_checkpoint("bert", tmp_path / "base", head=False)  # a bare encoder, as the build's base is
    model = BertForQuestionAnswering.from_pretrained(base)  # a fresh QA head: not in the base at all
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.add_(0.01)
        model.bert.embeddings.word_embeddings.weight[[5, 7]] += 0.5  # rows the training text moved
    final = tmp_path / "final"
    model.save_pretrained(final, safe_serialization=True)
    (tmp_path / "out").mkdir()
    rebuilt = apply_delta(base, pack_delta(final, base, tmp_path / "out"), tmp_path / "rebuilt")

    want, got = load_file(str(final / "model.safetensors")), load_file(str(rebuilt / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-3, err_msg=name)
    words = "bert.embeddings.word_embeddings.weight"
    moved = np.flatnonzero(np.any(got[words] != load_file(str(base / "model.safetensors"))[words[5:]], axis=1))
    assert moved.tolist() == [5, 7]
    assert AutoConfig.from_pretrained(rebuilt).architectures == ["BertForQuestionAnswering"]
    assert (rebuilt / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
