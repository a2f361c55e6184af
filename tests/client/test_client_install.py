"""The client installs alone (httpx and its few dependencies, none of the server's) and answers from a fresh venv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import Server
from tests.support.marker_model import MARKER

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"fastapi", "starlette", "uvicorn", "pydantic", "pydantic-settings", "numpy", "onnxruntime", "tokenizers"}

SCRIPT = """
import sys
from qa_client import QAClient
with QAClient(sys.argv[1], api_key=sys.argv[2]) as qa:
    print(qa.answer("한국의 수도는?", "한국의 수도는 서울이다.").best.text)
"""


def test_the_client_installs_alone_and_answers(qa_server: Server, tmp_path: Path):
    # build from a copy: pip builds a local directory in place, which would leave build/ in the checkout
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "clients" / "python", src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    venv = tmp_path / "venv"
    # no pip inside the venv (ensurepip costs seconds): this pip installs into it with --python
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    done = subprocess.run([*pip, "install", "-q", str(src)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([*pip, "list", "--format=json"], check=True, capture_output=True, text=True).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert {"qa-service-client", "httpx"} <= installed
    assert not installed & SERVER_ONLY, installed
    # -I: no PYTHONPATH, no current directory, no user site, so only the venv's packages can be imported
    out = subprocess.run(
        [str(python), "-I", "-c", SCRIPT, qa_server.url, qa_server.api_key],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MARKER
