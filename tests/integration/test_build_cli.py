"""`python -m model_export build configs/tiny-smoke.toml` end to end, in a subprocess, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.engine.bundle import verify_bundle
from tests.support.tiny_model import KORQUAD_DEV, build_tiny_hf_model

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "model_export", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "verb",
    [
        "import-base",
        "train",
        "evaluate",
        "score",
        "sweep",
        "calibrate",
        "export",
        "quantize",
        "validate",
        "build",
        "bundle",
    ],
)
def test_every_verb_has_help(verb: str) -> None:
    r = run_cli(verb, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python -m model_export " + verb in r.stdout


def test_bundle_help_shows_a_worked_example() -> None:
    out = run_cli("bundle", "--help").stdout
    assert "example" in out and "python -m model_export bundle ./my-koelectra-qa --out models/my-qa" in out
    assert "QA_MODEL_DIR=models/my-qa make serve" in out


def test_build_rejects_a_typo_and_a_wrong_type(tmp_path: Path) -> None:
    r = run_cli(
        "build",
        str(ROOT / "configs" / "tiny-smoke.toml"),
        "--set",
        "train.learnig_rate=0.1",
        "--set",
        'windows.doc_stride="32"',
        "--work-dir",
        str(tmp_path / "work"),
    )
    assert r.returncode == 2
    assert (
        "train.learnig_rate: unknown key" in r.stderr
        and "windows.doc_stride: Input should be a valid integer" in r.stderr
    )
    assert not (tmp_path / "work").exists()


def test_build_tiny_smoke_end_to_end(tmp_path: Path) -> None:
    if not KORQUAD_DEV.is_file():
        pytest.skip(f"{KORQUAD_DEV} not found")
    base = build_tiny_hf_model(tmp_path / "base")
    bundle = tmp_path / "bundle"
    r = run_cli(
        "build",
        str(ROOT / "configs" / "tiny-smoke.toml"),
        "--work-dir",
        str(tmp_path / "work"),
        "--bundle-dir",
        str(bundle),
        "--set",
        f"base.path={base}",
        "--set",
        f"data.file={KORQUAD_DEV}",
        "--set",
        "calibrate.enabled=true",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith(str(bundle))
    # the calibration model trains before the shipped model's export, so an interrupted build resumes training first
    log = r.stderr
    assert log.index("model_export.pipeline INFO calibration: ") < log.index(f"-> {tmp_path / 'work' / 'onnx'}\n")
    assert "'logits': 'served'" in log  # and it was calibrated on its own served file, exported before
    assert log.index(f"-> {tmp_path / 'work' / 'calibrate' / 'served' / 'onnx'}\n") < log.index("calibration: ")

    m = verify_bundle(bundle)
    assert m.variants == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert m.command.startswith("python -m model_export build")
    assert m.training["steps"] == 4 and m.training["config"]["train_articles"] == "0:112"  # type: ignore[index]
    # each shipped variant is scored on the held-out articles, with both metrics
    assert {(s.variant, s.metric) for s in m.scores} == {(v, k) for v in ("fp32", "int8") for k in ("korquad", "squad")}
    assert all(s.n == 8 and "112:140" in s.split for s in m.scores)
    # fp16 was built, validated and scored but not shipped
    assert m.validation["variants"]["fp16"]["structure"]["inputs"] == m.input_names  # type: ignore[index]
    assert {s["variant"] for s in m.model_extra["unshipped_scores"]} == {"fp16"}  # type: ignore[index]
    assert m.model_extra["int8_method"] == "weight-only"  # type: ignore[index]
    cal = m.calibration
    assert "100:112" in str(cal["fitted_on"]) and cal["fit_models"] == 1
    # the record `--until calibrate` leaves to choose by is the one the bundle carries
    assert json.loads((tmp_path / "work" / "calibrate" / "calibration.json").read_text()) == cal
    assert (list(m.score_calibration), m.null_threshold) == (cal["score_calibration"], cal["null_threshold"])

    # the service loads what the build wrote, as it is, and answers from it
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    context = "서울은 대한민국의 수도이다. 부산은 항구 도시이다."
    with TestClient(create_app(Settings(model_dir=bundle, intra_op_threads=1))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = client.post("/answer", json={"question": "수도는?", "context": context, "top_k": 3})
        assert r.status_code == 200, r.text
        answers = r.json()["answers"]
        assert answers and all(context[a["start"] : a["end"]] == a["text"] for a in answers)
        assert client.get("/v1/models").json()["data"][0]["precision"] == "int8"


def test_build_until_stops_before_the_test_split_and_goes_on_from_there(tmp_path: Path) -> None:
    """A choice made on training articles (calibrate.margin, from the cross-fitted figures) must come before
    anything runs on the test split: --until stops there, and the same command goes on without retraining."""
    if not KORQUAD_DEV.is_file():
        pytest.skip(f"{KORQUAD_DEV} not found")
    base = build_tiny_hf_model(tmp_path / "base")
    work, bundle = tmp_path / "work", tmp_path / "bundle"
    config = str(ROOT / "configs" / "tiny-smoke.toml")
    sets = [f"base.path={base}", f"data.file={KORQUAD_DEV}"]
    build = ["build", config, "--work-dir", str(work), "--bundle-dir", str(bundle), *(f"--set={s}" for s in sets)]

    r = run_cli(*build, "--until", "calibrate")
    assert r.returncode == 2 and "--until calibrate needs calibrate.enabled = true" in r.stderr
    assert not work.exists()

    r = run_cli(*build, "--until", "train")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (Path(r.stdout.strip().splitlines()[-1]) / "config.json").is_file()  # the trained model
    assert "stopped after train" in r.stderr and not (work / "calibrate").exists()

    r = run_cli(*build, "--set=calibrate.enabled=true", "--until", "calibrate")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train: reusing finished" in r.stderr and "stopped after calibrate" in r.stderr
    record_file = Path(r.stdout.strip().splitlines()[-1])
    assert record_file == work / "calibrate" / "calibration.json"
    record = json.loads(record_file.read_text())
    assert "100:112" in str(record["fitted_on"]) and len(record["score_calibration"]) == 2
    # nothing ran on the test split: no export of the shipped model, no scores, no bundle
    assert not (work / "onnx").exists() and not bundle.exists()
    assert not list(work.glob("eval-*")) and not (work / "calibration-test").exists()


def test_build_fails_when_bundle_exceeds_budget(tmp_path: Path) -> None:
    if not KORQUAD_DEV.is_file():
        pytest.skip(f"{KORQUAD_DEV} not found")
    base = build_tiny_hf_model(tmp_path / "base")
    r = run_cli(
        "build",
        str(ROOT / "configs" / "tiny-smoke.toml"),
        "--work-dir",
        str(tmp_path / "work"),
        "--bundle-dir",
        str(tmp_path / "bundle"),
        "--set",
        f"base.path={base}",
        "--set",
        f"data.file={KORQUAD_DEV}",
        "--set",
        "export.max_bundle_mb=0.1",
        "--set",
        "evaluate.max_examples=2",
    )
    assert r.returncode != 0
    assert "BundleTooLarge" in r.stderr and "> 0.1 MiB" in r.stderr
    assert not (tmp_path / "bundle").exists()


def test_single_verbs_chain(tiny_bundle: Path, tmp_path: Path) -> None:
    """import-base --from-hf -> export -> quantize -> validate, each as its own command."""
    hf = tmp_path / "hf"
    assert run_cli("import-base", "--from-hf", str(tiny_bundle.parent / "hf"), "--out", str(hf)).returncode == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    onnx_dir = tmp_path / "onnx"
    r = run_cli("export", "--model", str(hf), "--out", str(onnx_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("quantize", "--model", str(onnx_dir / "model.onnx"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (onnx_dir / "model.int8.onnx").is_file()
    window_flags = ["--max-seq-length", "128", "--doc-stride", "32", "--max-query-length", "32"]
    r = run_cli("validate", "--model", str(hf), "--onnx-dir", str(onnx_dir), *window_flags)
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(json.loads((onnx_dir / "validation.json").read_text())["variants"]) == {"fp32", "fp16", "int8"}
    # an impossible tolerance makes the verb fail with the numbers, not pass quietly
    tight = json.dumps({"int8": {"atol": 1e-9}})
    r = run_cli("validate", "--model", str(hf), "--onnx-dir", str(onnx_dir), *window_flags, "--tolerances", tight)
    assert r.returncode == 1 and "FAILED" in r.stderr and "atol 1e-09" in r.stderr
