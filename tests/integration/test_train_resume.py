"""Training resumes after an interruption and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from model_export.__main__ import main
from model_export.config import TrainConfig
from model_export.train import train
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]


def config(base: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        base_model=str(base),
        train_file=str(KORQUAD_DEV),
        output_dir=str(out),
        max_seq_length=128,
        doc_stride=32,
        max_query_length=32,
        max_steps=4,
        max_examples=24,
        batch_size=4,
        learning_rate=1e-3,
        save_every=2,
        keep_checkpoints=5,
        threads=1,
        precision="fp32",
        freeze_word_embeddings=False,
    )


@pytest.mark.skipif(not KORQUAD_DEV.is_file(), reason="KorQuAD dev set not found")
def test_resume_matches_uninterrupted_run(tiny_bundle: Path, tmp_path: Path):
    base = tiny_bundle.parent / "hf"
    straight = train(config(base, tmp_path / "straight"))
    # an interrupted run: stopped while saving checkpoint-4 (its file half written), after step 2's
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight", interrupted)
    shutil.rmtree(interrupted / "final")
    cut = interrupted / "checkpoint-4"
    (cut / "state.pt").rename(cut / "state.pt.tmp")
    with (cut / "state.pt.tmp").open("r+b") as f:
        f.truncate(1000)
    # and a final model cut short by an earlier stop: never reused, replaced
    (interrupted / "final.partial").mkdir()
    (interrupted / "final.partial" / "config.json").write_text("{")
    # resume from a perturbed base: only a run that really restores checkpoint-2 can match `straight`
    other = tmp_path / "other-base"
    shutil.copytree(base, other)
    weights = load_file(str(other / "model.safetensors"))
    weights = {k: v + 0.01 for k, v in weights.items()}
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    resumed = train(config(other, interrupted))
    assert sorted(p.name for p in interrupted.iterdir() if not p.name.startswith("checkpoint-")) == ["final"]
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    first = load_file(str(base / "model.safetensors"))
    assert not np.allclose(first["qa_outputs.weight"], a["qa_outputs.weight"])  # it did train


@pytest.mark.skipif(not KORQUAD_DEV.is_file(), reason="KorQuAD dev set not found")
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job's grace period or the end of a sitting: SIGTERM costs at most the step in progress. The signal needs
    a process of its own; the same command then resumes in this one."""
    out = tmp_path / "run"

    def command(max_steps: int) -> list[str]:
        return [
            *(sys.executable, "-m", "model_export", "train", "--base-model", str(tiny_bundle.parent / "hf")),
            *("--train-file", str(KORQUAD_DEV), "--output-dir", str(out), "--max-seq-length", "128"),
            *("--doc-stride", "32", "--max-query-length", "32", "--max-examples", "24", "--batch-size", "4"),
            *("--save-every", "100000", "--threads", "1", "--precision", "fp32", "--max-steps", str(max_steps)),
        ]

    log = tmp_path / "train.log"
    with log.open("w") as f:
        proc = subprocess.Popen(command(100000), cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True)
    deadline = time.monotonic() + 120
    while "windows" not in log.read_text():  # past the setup: the loop and its handlers are next
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-2000:]
    assert "rerun to resume" in log.read_text()
    saved = [p for p in out.glob("checkpoint-*") if (p / "state.pt").is_file()]
    assert len(saved) == 1 and not (out / "final").exists()  # save_every was never reached: the signal saved it
    step = int(saved[0].name.split("-")[1])
    assert 0 < step < 100000

    with caplog.at_level(logging.INFO, logger="model_export"):
        assert main(command(step + 2)[3:]) == 0
    assert f"resumed from {saved[0]} at step {step}" in caplog.text
    assert json.loads((out / "final" / "training.json").read_text())["steps"] == step + 2
