"""Shared fixtures: the tiny random QA model bundle, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.tiny_model import KORQUAD_DEV, build_tiny_bundle

TESTS = Path(__file__).resolve().parent
# Real models, servers, builds and browsers: `make test` runs them, `make test-fast` leaves them out.
SLOW_DIRS = (TESTS / "integration",)
SLOW_FILES = {"test_client_server.py", "test_client_install.py"}

# CI draws the same examples on every run, so a red build is the code's fault and can be rerun to the same end;
# locally hypothesis explores (and keeps what it finds in .hypothesis/). A failure prints the example: pin it
# with @example on the test, as test_windows does for the "\r\n" case, so it stays a regression test everywhere.
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.name in SLOW_FILES or any(d in path.parents for d in SLOW_DIRS):
            item.add_marker(pytest.mark.slow)


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
