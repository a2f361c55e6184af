"""scripts/device/gpu_train.py on the tiny model, on a CPU: it trains and returns the delta and the training record
only, and apply_delta rebuilds the trained checkpoint from that delta: the plumbing a GPU call relies on, checked
where there is no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoConfig, BertForQuestionAnswering

from scripts.device.gpu_train import apply_delta, pack_delta
from tests.support.tiny_archs import build_checkpoint
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_gpu_call_only_trains_and_what_it_returns_rebuilds_the_model(tiny_bundle: Path, tmp_path: Path) -> None:
    hf, out, work = tiny_bundle.parent / "hf", tmp_path / "out", tmp_path / "work"
    r = run(
        "scripts/device/gpu_train.py",
        *("--config", "configs/tiny-smoke.toml", "--base", str(hf), "--data", str(KORQUAD_DEV)),
        *("--out", str(out), "--work", str(work), "--smoke", "--no-sweep", "--set", 'data.train_articles="0:4"'),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    returned = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert returned == ["delta-0.npz", "final.json"]  # no calibration logits: the build calibrates on the CPU
    record = json.loads((out / "final.json").read_text())
    assert record["training"]["config"]["train_articles"] == "0:4" and record["training"]["steps"] == 2
    rebuilt = apply_delta(hf, sorted(out.glob("delta-*.npz")), tmp_path / "rebuilt")
    want, got = (
        load_file(str(work / "final" / "final" / "model.safetensors")),
        load_file(str(rebuilt / "model.safetensors")),
    )
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-3, err_msg=name)


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
