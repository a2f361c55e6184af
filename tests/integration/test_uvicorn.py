"""`python -m app` as a user runs it: a real uvicorn process over HTTP, graceful SIGTERM, bad bundles exit non-zero."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.marker_model import MARKER

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        env={**os.environ, "QA_HOST": "127.0.0.1", "QA_INTRA_OP_THREADS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if call(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.1)


def test_real_server_answers_and_shuts_down_gracefully(marker_bundle):
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        assert call(base + "/livez") == (200, {"status": "alive", "detail": ""})
        context = "긴 문장. " * 80 + f"정답은 {MARKER}이다."
        status, body = call(base + "/answer", {"question": "정답은?", "context": context})
        assert status == 200 and body["answers"][0]["start"] == context.rindex(MARKER)
        status, body = call(base + "/batch_answer", {"items": [{"question": "q", "context": MARKER}] * 3})
        assert status == 200 and len(body["results"]) == 3
        status, body = call(base + "/answer", {"question": "", "context": "x"})
        assert status == 422 and body["error"]["fields"][0]["field"] == "question"
        with urllib.request.urlopen(base + "/docs", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    # a drained shutdown is a clean exit
    assert proc.returncode == 0, out
    assert "Application shutdown complete" in out
    assert "CPUExecutionProvider" in out  # the provider is in the start-up log
    assert "auth: off" in out  # and whether the API needs a key


def test_bad_bundle_exits_nonzero_with_reason(tmp_path):
    proc = start({"QA_MODEL_DIR": str(tmp_path), "QA_PORT": str(free_port())})
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 3
    [line] = out.splitlines()  # one line: the reason (tests/integration/test_startup.py has the other cases)
    assert "manifest.json" in line


def test_invalid_settings_exit_2(tmp_path):
    proc = start({"QA_MODEL_DIR": str(tmp_path), "QA_PORT": "70000"})
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 2 and "port" in out


def serve_and_ask(bundle: Path, env: dict[str, str]) -> tuple[dict, dict, str]:
    """Start a server on `bundle`, ask for the marker, stop it; /v1/models, the answer body and the log."""
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(bundle), "QA_PORT": str(port), **env})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        status, info = call(base + "/v1/models")
        assert status == 200
        context = "긴 문장. " * 80 + f"정답은 {MARKER}이다."
        status, body = call(base + "/answer", {"question": "정답은?", "context": context})
        assert status == 200, body
        assert body["answers"][0]["start"] == context.rindex(MARKER)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    return info["data"][0], body, out


def test_static_int8_is_served_by_openvino_and_matches_onnxruntime(static_marker_bundle: Path):
    """The QDQ file runs on OpenVINO by default, says so, and ONNX Runtime (forced) finds the same answers."""
    manifest = json.loads((static_marker_bundle / "manifest.json").read_text())
    assert manifest["files"]["model.int8.onnx"]["runtime"] == "openvino"
    assert manifest["validation"]["variants"]["int8"]["runtime"] == "openvino"  # validated where it is served
    env = {"QA_MODEL_VARIANT": "int8"}
    info, on_ov, log = serve_and_ask(static_marker_bundle, env)
    assert info["runtime"] == "openvino" and info["execution_provider"].startswith("OpenVINO")
    assert "OpenVINO" in log and "static int8" in info["runtime_reason"]
    info, on_ort, _ = serve_and_ask(static_marker_bundle, {**env, "QA_RUNTIME": "onnxruntime"})
    assert info["runtime"] == "onnxruntime" and info["runtime_reason"] == "QA_RUNTIME=onnxruntime"
    assert [(a["start"], a["end"]) for a in on_ov["answers"]] == [(a["start"], a["end"]) for a in on_ort["answers"]]


def test_idle_keep_alive_connection_outlives_client_idle_timeouts(marker_bundle: Path):
    """A connection idle longer than httpx's 5 s keep-alive is still served: a server that closed it first
    would race the client's next request, which the client sees as a reset (it did, under load)."""
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(marker_bundle), "QA_PORT": str(port)})
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/livez")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        time.sleep(6)
        conn.request("GET", "/livez")  # the same socket, after 6 s idle
        response = conn.getresponse()
        assert response.status == 200, response.read()
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
