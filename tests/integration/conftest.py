"""Real ONNX bundles for service tests (the marker model has a known answer wherever the marker sits), and the
one headless browser of the demo page tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import BrowserMissing, chromium_driver
from tests.support.marker_model import build_marker_bundle


@pytest.fixture(scope="session")
def marker_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # tiny_model.build_tiny_bundle keeps the HF checkpoint beside the bundle
    return build_marker_bundle(tmp_path_factory.mktemp("marker"), tiny_bundle.parent / "hf")


@pytest.fixture(scope="session")
def static_marker_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The marker model with static (QDQ) int8, the file the service runs on OpenVINO."""
    return build_marker_bundle(tmp_path_factory.mktemp("marker-static"), tiny_bundle.parent / "hf", "static")


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the whole session (starting one costs seconds); tests set its size with emulate()."""
    try:
        driver = chromium_driver(tmp_path_factory.mktemp("chromium-profile"))
    except BrowserMissing as e:
        pytest.fail(str(e))  # a browser test that skips is a test that never runs
    try:
        yield driver
    finally:
        driver.quit()
