"""`python -m app`'s start-up checks in-process: one line per problem naming the setting, exit codes in --help,
QA_* variables that are near misses of a setting stop start-up while other unknown ones only warn."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.__main__ import main, one_line
from app.cli import build_parser, settings_errors
from app.settings import Settings, check_environment


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("QA_"):
            monkeypatch.delenv(name)


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_help_documents_every_exit_code():
    text = build_parser().format_help()
    for code in ("0 ", "1 ", "2 ", "3 ", "4 "):
        assert f"\n  {code}" in text, code
    assert "exit codes:" in text and "port is in use" in text


def test_a_bad_flag_value_is_one_line_naming_flag_and_env_without_urls(capsys):
    code, lines = run(["--port", "abc"], capsys)
    assert code == 2
    [line] = lines
    assert "--port" in line and "QA_PORT" in line and "'abc'" in line
    assert "https://" not in line and "pydantic" not in line


def test_every_problem_is_its_own_line(capsys, monkeypatch):
    monkeypatch.setenv("QA_MAX_TOP_K", "0")
    monkeypatch.setenv("QA_API_KYE", "secret")
    code, lines = run(["--port", "abc", "--keep-alive-s", "-1"], capsys)
    assert code == 2
    assert len(lines) == 4, lines
    assert any("QA_MAX_TOP_K" in line for line in lines)
    assert any("QA_KEEP_ALIVE_S" in line and "--keep-alive-s" in line for line in lines)
    assert any("QA_API_KYE" in line and "QA_API_KEY" in line for line in lines)


def test_an_unknown_flag_is_one_line_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--prot", "9000"])
    assert e.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert "--prot" in line and "--help" in line


def test_a_secret_is_never_echoed(capsys):
    code, lines = run(["--api-key", "   "], capsys)
    assert code == 2
    [line] = lines
    assert "QA_API_KEY" in line and "empty or whitespace" in line


def test_cross_field_errors_name_the_settings():
    with pytest.raises(ValidationError) as e:
        Settings(max_queue_windows=4, max_windows_per_request=8)
    [line] = settings_errors(e.value)
    assert "QA_MAX_QUEUE_WINDOWS" in line and "QA_MAX_WINDOWS_PER_REQUEST" in line


def test_a_kubernetes_service_link_in_a_setting_says_so():
    with pytest.raises(ValidationError) as e:
        Settings(port="tcp://10.0.0.1:80")
    [line] = settings_errors(e.value)
    assert "enableServiceLinks" in line


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("QA_API_KYE", "QA_API_KEY"),
        ("QA_APIKEY", "QA_API_KEY"),
        ("QA_API_KEYS", "QA_API_KEY"),
        ("qa_max_body_byte", "QA_MAX_BODY_BYTES"),
    ],
)
def test_a_near_miss_of_a_setting_is_an_error_naming_it(name, meant):
    errors, warnings = check_environment({name: "x"})
    [error] = errors
    assert name in error and f"did you mean {meant}?" in error
    assert warnings == []


@pytest.mark.parametrize(
    "name",
    [
        # what Kubernetes injects for a Service named qa-service
        "QA_SERVICE_PORT",
        "QA_SERVICE_SERVICE_HOST",
        "QA_SERVICE_SERVICE_PORT",
        "QA_SERVICE_SERVICE_PORT_HTTP",
        "QA_SERVICE_PORT_80_TCP",
        "QA_SERVICE_PORT_80_TCP_ADDR",
        # and for other qa-* Services, or anything else far from a setting
        "QA_METRICS_PORT",
        "QA_DOCS_SERVICE_HOST",
        "QA_TEAM",
    ],
)
def test_other_unknown_qa_variables_only_warn(name):
    errors, warnings = check_environment({name: "tcp://10.0.0.1:80", "QA_PORT": "8000", "HOME": "/tmp"})
    assert errors == []
    [warning] = warnings
    assert name in warning


def test_service_link_warns_at_start_and_does_not_stop_it(capsys, monkeypatch):
    monkeypatch.setenv("QA_SERVICE_PORT", "tcp://10.0.0.1:80")
    monkeypatch.setenv("QA_PORT", "abc")  # stop before anything loads: only the classification matters here
    code, lines = run([], capsys)
    assert code == 2
    [line] = lines
    assert "QA_PORT" in line and "QA_SERVICE_PORT" not in line


def test_one_line_joins_a_multi_line_reason_and_drops_library_urls():
    text = (
        "manifest.json: invalid manifest: 1 validation error for Manifest\n"
        "files.`model.onnx`.runtime\n"
        "  Input should be 'onnxruntime' or 'openvino' [type=literal_error]\n"
        "    For further information visit https://errors.pydantic.dev/2.14/v/literal_error"
    )
    line = one_line(text)
    assert "\n" not in line and "https://" not in line and "'openvino'" in line
