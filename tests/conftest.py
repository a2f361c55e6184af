"""Shared fixtures: the tiny random QA model bundle, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.tiny_model import KORQUAD_DEV, build_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified bundle dir (model.onnx, model.int8.onnx, tokenizer.json, manifest.json); ~5 s to build.

    max_seq_length 128, doc_stride 32, max_query_length 32, so a paragraph already spans several windows.
    """
    if not KORQUAD_DEV.is_file():
        pytest.skip(f"KorQuAD dev set not found at {KORQUAD_DEV} (set KORQUAD_DEV)")
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny-model"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skipped test fails the run: a check whose tool is missing has not passed."""
    if not os.environ.get("CI") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; a skipped check is a failed check", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
