"""One real uvicorn server for the client's tests: the marker model, behind an API key, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qa_client import QAClient, QAConnectionError

from tests.support.marker_model import build_marker_bundle

REPO = Path(__file__).resolve().parents[2]
API_KEY = "client-test-key"


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def client_marker_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the same build as tests/integration's marker_bundle, whose fixture is not visible from this folder
    return build_marker_bundle(tmp_path_factory.mktemp("client-marker"), tiny_bundle.parent / "hf")


# package scope: the server stops after the last test of tests/client, not at the end of the whole run
@pytest.fixture(scope="package")
def qa_server(client_marker_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`python -m app` on a free port with QA_API_KEY set: one server for the integration and install tests."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a file, not a pipe: nobody reads the log while the server runs, and a full pipe would block it
    log_path = tmp_path_factory.mktemp("client-server") / "server.log"
    env = {
        **os.environ,
        "QA_MODEL_DIR": str(client_marker_bundle),
        "QA_HOST": "127.0.0.1",
        "QA_PORT": str(port),
        "QA_INTRA_OP_THREADS": "1",
        "QA_API_KEY": API_KEY,
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with QAClient(url, timeout=5) as probe:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if probe.ready():
                        break
                except QAConnectionError:
                    pass
                assert time.monotonic() < deadline, "server never became ready:\n" + log_path.read_text()
                time.sleep(0.1)
        yield Server(url, API_KEY)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()
