"""The installed package (what `pip install .` and the Docker image get) carries the demo page's files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_demo_page(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    # the files the Dockerfile copies before `pip install .`, so the build never writes into the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("app", "model_export"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        check=True,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in sorted((REPO / "app" / "static").iterdir()):
        assert f"app/static/{f.name}" in names, f"{f.name} is not in the wheel: see [tool.setuptools.package-data]"


def test_docker_build_context_holds_the_demo_page():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY app ./app" in dockerfile
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert not any(line and not line.startswith("#") and "static" in line for line in ignored)
