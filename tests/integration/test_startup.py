"""`python -m app` start-up on real subprocesses: a bundle that cannot run exits 3 with one line and never listens;
a busy port exits 4 before any model loads; a server that listens is ready; --check reports the runtime, the
device and the port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_uvicorn import REPO, call, free_port

pytestmark = pytest.mark.slow


def launch(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=REPO,
        env={**os.environ, "QA_HOST": "127.0.0.1", "QA_INTRA_OP_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def run_until_exit(proc: subprocess.Popen[str], port: int, timeout: float = 120) -> tuple[bool, str, str]:
    """Try to connect all along; (ever connected, stdout, stderr) once it exits."""
    listened = False
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        listened |= connects(port)
        assert time.monotonic() < deadline, "the server did not exit"
        time.sleep(0.02)
    out, err = proc.communicate()
    return listened, out, err


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def corrupt_copy(src: Path, dst: Path, name: str, mutate: Callable[[bytes], bytes]) -> Path:
    """A copy of `src` with file `name` mutated and the manifest's hash and size updated to match."""
    shutil.copytree(src, dst)
    path = dst / name
    data = mutate(path.read_bytes())
    path.write_bytes(data)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def unknown_runtime(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["runtime"] = "tensorrt"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize(
    ("case", "expect"),
    [("tokenizer", "tokenizer.json"), ("onnx", "model.onnx"), ("runtime", "tensorrt")],
)
def test_a_bundle_that_cannot_run_exits_3_with_one_line_and_never_listens(marker_bundle, tmp_path, case, expect):
    if case == "tokenizer":
        bundle = corrupt_copy(marker_bundle, tmp_path / "b", "tokenizer.json", half)
    elif case == "onnx":
        bundle = corrupt_copy(marker_bundle, tmp_path / "b", "model.onnx", half)  # verifies: the hash matches
    else:
        bundle = unknown_runtime(marker_bundle, tmp_path / "b")
    port = free_port()
    proc = launch({"QA_MODEL_DIR": str(bundle), "QA_PORT": str(port), "QA_MODEL_VARIANT": "fp32"})
    listened, out, err = run_until_exit(proc, port)
    assert proc.returncode == 3, err
    [line] = lines(err)
    assert line.startswith("error: bad model bundle") and expect in line
    assert "QA_MODEL_DIR" in line and "https://" not in line
    assert not listened, "a server whose model cannot run must never accept a connection"
    assert out == ""


def test_a_busy_port_exits_4_before_any_model_loads(marker_bundle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = launch({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port)})
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    [line] = lines(err)
    assert f"127.0.0.1:{port}" in line and "QA_PORT" in line and "in use" in line


def test_the_port_opens_only_once_the_model_is_ready_and_auth_is_logged(marker_bundle):
    port = free_port()
    proc = launch({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port), "QA_API_KEY": "s3cret\n"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not connects(port):
            assert proc.poll() is None and time.monotonic() < deadline, "server never listened"
            time.sleep(0.02)
        # the first answer it ever gives: ready, never "loading model"
        assert call(base + "/readyz") == (200, {"status": "ready", "detail": ""})
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "auth: on (1 key, from QA_API_KEY)" in err
    assert err.index("loaded on CPUExecutionProvider") < err.index(f"listening on http://127.0.0.1:{port}")


def test_check_reports_runtime_device_and_port(marker_bundle):
    port = free_port()
    env = {"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port), "QA_SERVICE_PORT": "tcp://10.0.0.1:80"}
    proc = launch(env, "--check")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["port"] == "free" and summary["listen"] == f"127.0.0.1:{port}"
    assert summary["model"]["runtime"] == "onnxruntime"
    assert summary["model"]["execution_provider"] == "CPUExecutionProvider"
    assert summary["auth"].startswith("off")
    # a Kubernetes service link is not a setting: a warning, not an error
    assert "QA_SERVICE_PORT is not a setting" in err

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = launch(env, "--check")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    assert "in use" in json.loads(out)["port"]
