"""The manifest's score calibration: the forms the service reads, and the one it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.bundle import BundleError, read_manifest

MINIMAL = {
    "name": "m",
    "languages": ["ko"],
    "base_model": "b",
    "max_seq_length": 384,
    "doc_stride": 128,
    "max_query_length": 64,
    "input_names": ["input_ids", "attention_mask"],
    "variants": {},
    "files": {},
}


def manifest_with(tmp_path: Path, calibration: list[float]) -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps(MINIMAL | {"score_calibration": calibration}))
    return tmp_path


@pytest.mark.parametrize("calibration", [[1.0, 0.0], [1.2, 0.3], [0.9, -0.6, -0.12], [1.0, 0.0, 0.0]])
def test_platt_with_or_without_the_null_margin_weight(tmp_path: Path, calibration: list[float]):
    assert list(read_manifest(manifest_with(tmp_path, calibration)).score_calibration) == calibration


@pytest.mark.parametrize("calibration", [[0.9, -0.6, 0.1], [1.0], [1.0, 0.0, 0.0, 0.0]])
def test_a_map_that_could_reorder_answers_or_is_malformed_is_refused(tmp_path: Path, calibration: list[float]):
    with pytest.raises(BundleError, match="score_calibration"):
        read_manifest(manifest_with(tmp_path, calibration))
