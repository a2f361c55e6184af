"""The README is the user's manual: its commands, settings table and CI hook must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.settings_table import rows

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_two_commands_and_ci_runs_the_test_command():
    assert "make serve" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (REPO / "Makefile").read_text()
    assert "-m app" in makefile  # make serve runs the same start command as the image


def test_settings_table_matches_settings():
    for row in rows():
        assert row in README, f"README settings table is stale; regenerate with scripts/settings_table.py: {row}"


def test_no_unfilled_placeholders():
    assert not re.findall(r"__[A-Z_]+__", README)
