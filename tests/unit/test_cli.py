"""The server CLI: every setting is a flag whose help names its env var and default; flag > env > default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.__main__ import main
from app.cli import build_parser, parse
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_help_documents_every_setting():
    text = " ".join(build_parser().format_help().split())
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert f"env QA_{name.upper()}" in text, name
        assert " ".join(str(field.description).split()) in text, name
    assert "--check" in text and "--version" in text and "examples:" in text


def test_only_given_flags_become_settings():
    _, flags = parse(["--port", "9001", "--no-warmup", "--model-variant", "fp32"])
    assert flags == {"port": "9001", "warmup": False, "model_variant": "fp32"}


def test_flag_beats_env_beats_default(monkeypatch):
    monkeypatch.setenv("QA_PORT", "8100")
    monkeypatch.setenv("QA_MAX_TOP_K", "7")
    settings = Settings(**parse(["--port", "8200"])[1])
    assert settings.port == 8200  # flag over env
    assert settings.max_top_k == 7  # env over default
    assert settings.max_batch_items == Settings.model_fields["max_batch_items"].default


def test_bad_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--providers", "tpu"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_bad_value_exits_2_with_the_setting_named(capsys):
    assert main(["--port", "70000", "--check"]) == 2
    assert "port" in capsys.readouterr().err


@pytest.mark.slow  # loads and warms up the shipped model
def test_check_verifies_the_default_bundle(capsys):
    assert main(["--check", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert '"bundle": "verified"' in out and ":8123" in out


def test_check_fails_on_a_bad_bundle(tmp_path):
    assert main(["--check", "--model-dir", str(tmp_path)]) == 3


def test_help_and_version_do_not_start_the_server():
    for args, expect in ((["--help"], "--max-batch-windows"), (["--version"], __version__)):
        r = subprocess.run(
            [sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0 and expect in r.stdout, r.stderr
