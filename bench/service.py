"""Start `python -m app` on a free local port and wait until /readyz says it can answer (shared by the benches)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    env: dict[str, str], model_dir: str | None = None, ready_timeout_s: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `python -m app` child with `env` on top of ours; yields (process, base URL) once ready, terminates it after."""
    port = free_port()
    full = {**os.environ, "QA_HOST": "127.0.0.1", "QA_PORT": str(port), "QA_LOG_LEVEL": "warning", **env}
    if model_dir:
        full["QA_MODEL_DIR"] = str(model_dir)
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=full, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server never became ready")
            time.sleep(0.2)
        yield proc, base
    finally:
        proc.terminate()
        proc.wait(60)
