"""The manifest's score calibration and null threshold: the forms the service reads, the ones it and the build
refuse, and how the build rewrites a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.bundle import BundleError, Manifest, read_manifest
from model_export.bundle import rewrite_manifest
from model_export.export import ExportError
from model_export.stages import calibration_fields

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


def test_a_non_finite_calibration_or_threshold_is_refused(tmp_path: Path):
    # pydantic writes NaN as null and reads "NaN"/"Infinity" back as floats: neither may reach the decoder
    (tmp_path / "manifest.json").write_text(json.dumps(MINIMAL)[:-1] + ', "null_threshold": NaN}')
    with pytest.raises(BundleError, match="null_threshold"):
        read_manifest(tmp_path)
    with pytest.raises(BundleError, match="score_calibration"):
        read_manifest(manifest_with(tmp_path, [float("inf"), 0.0]))


@pytest.mark.parametrize(
    ("fit", "field"),
    [
        ((float("nan"), 0.0), "score_calibration"),
        ((1.0, 0.0, 0.2), "score_calibration"),
        ((1.0, 0.0), "null_threshold"),
    ],
)
def test_the_build_refuses_a_fit_the_manifest_would(fit: tuple[float, ...], field: str):
    record = {"score_calibration": list(fit), "null_threshold": float("-inf") if field == "null_threshold" else 1.5}
    with pytest.raises(ExportError, match=field):
        calibration_fields(record)


def test_a_good_fit_becomes_the_manifest_fields_with_its_record():
    record = {"score_calibration": [0.98, -0.25, -0.09], "null_threshold": 1.7, "ece": 0.02}
    fields = calibration_fields(record)
    assert fields == {"score_calibration": (0.98, -0.25, -0.09), "null_threshold": 1.7, "calibration": record}
    Manifest.model_validate(MINIMAL | fields)


def test_rewriting_a_manifest_replaces_it_whole(tmp_path: Path):
    (tmp_path / "manifest.json").write_text(json.dumps(MINIMAL))
    manifest = read_manifest(tmp_path)
    manifest.null_threshold = 2.5
    rewrite_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path).null_threshold == 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left behind
