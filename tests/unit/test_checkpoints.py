"""Checkpoint rotation: `keep_checkpoints` counts checkpoints a run can resume from."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.train import _latest_checkpoint, rotate_checkpoints


def make(out: Path, step: int, whole: bool) -> None:
    d = out / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / ("state.pt" if whole else "state.pt.tmp")).write_bytes(b"x")


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_saves_cut_short_go_and_the_newest_whole_ones_stay(tmp_path: Path, keep: int) -> None:
    # 9 sorts after 10 as text: rotation must order by step
    for step, whole in [(9, True), (10, True), (20, False), (30, True), (40, False), (100, True)]:
        make(tmp_path, step, whole)
    rotate_checkpoints(tmp_path, keep)
    left = sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir())
    assert left == [9, 10, 30, 100][-keep:]
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"
