"""Real ONNX bundles for service tests: the marker model has a known answer wherever the marker sits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.marker_model import build_marker_bundle


@pytest.fixture(scope="session")
def marker_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny_model.build_tiny_bundle keeps the HF checkpoint beside the bundle
    return build_marker_bundle(tmp_path_factory.mktemp("marker"), tiny_bundle.parent / "hf")


@pytest.fixture(scope="session")
def static_marker_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The marker model with static (QDQ) int8, the file the service runs on OpenVINO."""
    return build_marker_bundle(tmp_path_factory.mktemp("marker-static"), tiny_bundle.parent / "hf", "static")
