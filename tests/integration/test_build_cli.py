"""`python -m model_export build configs/tiny-smoke.toml` end to end on the tiny model, and the single-step verbs.

One build runs as a command in its own process (`--until train`); the rest call the CLI's `main` in this process
and go on from that training, as the same command would on a rerun: `--until calibrate`, then the whole build.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine.bundle import verify_bundle
from app.main import create_app
from app.settings import Settings
from model_export.__main__ import main
from model_export.bundle import BundleTooLarge
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-smoke.toml")
VERBS = ["import-base", "train", "evaluate", "score", "sweep", "calibrate", "export", "quantize", "validate"]
VERBS += ["build", "bundle"]
# the config's splits, cut down: fewer articles to learn trim rules on, calibrate on and measure on the test split
SPLITS = ['data.train_articles="0:30"', 'data.test_articles="112:115"', 'calibrate.dev_articles="100:103"']


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str  # what the command printed to stderr, then model_export's log as `name LEVEL message` lines


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@contextlib.contextmanager
def _model_export_log() -> Iterator[_Lines]:
    """model_export's INFO lines, which the CLI logs through the root logger's handler in a process of its own."""
    logger, handler = logging.getLogger("model_export"), _Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_cli(*args: str) -> Run:
    """`python -m model_export ARGS`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with _model_export_log() as log, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Run(code, out.getvalue(), err.getvalue() + "".join(line + "\n" for line in log.lines))


def build_args(work: Path, bundle: Path, base: Path, *more: str) -> list[str]:
    sets = [f"base.path={base}", f"data.file={KORQUAD_DEV}", *SPLITS]
    return ["build", CONFIG, "--work-dir", str(work), "--bundle-dir", str(bundle), *(f"--set={s}" for s in sets), *more]


def copy_work(work: Path, root: Path) -> Path:
    """A copy of a build's work dir to go on from, leaving the original as it was for the tests that read it."""
    return Path(shutil.copytree(work, root / "work"))


@pytest.fixture(scope="module")
def base(tiny_bundle: Path) -> Path:
    return tiny_bundle.parent / "hf"  # the tiny random BERT; the build copies it into work_dir/base


@pytest.fixture(scope="module")
def trained(base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`build --until train` as a user runs it, a command in its own process (the one such run here): its work dir
    holds the base and the trained model that the other builds reuse."""
    root = tmp_path_factory.mktemp("trained")
    r = subprocess.run(
        [sys.executable, "-m", "model_export", *build_args(root / "work", root / "bundle", base, "--until", "train")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return root / "work", r


@pytest.fixture(scope="module")
def calibrated(trained: tuple[Path, object], base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """The same command as `trained` with calibration on and `--until calibrate`: the training is reused."""
    root = tmp_path_factory.mktemp("calibrated")
    work = copy_work(trained[0], root)
    args = build_args(work, root / "bundle", base, "--set=calibrate.enabled=true", "--until", "calibrate")
    return work, run_cli(*args)


@pytest.fixture(scope="module")
def built(calibrated: tuple[Path, Run], base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    """The same command without --until: it goes on from the calibration to the shipped bundle."""
    root = tmp_path_factory.mktemp("built")
    work = copy_work(calibrated[0], root)
    return work, run_cli(*build_args(work, root / "bundle", base, "--set=calibrate.enabled=true"))


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: python -m model_export " + verb in capsys.readouterr().out


def test_every_verb_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # no verb: the help, and the status of a usage error
    listed = capsys.readouterr().out
    assert all(f"\n    {verb} " in listed for verb in VERBS), listed


def test_bundle_help_shows_a_worked_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bundle", "--help"])
    out = capsys.readouterr().out
    assert "example" in out and "python -m model_export bundle ./my-koelectra-qa --out models/my-qa" in out
    assert "QA_MODEL_DIR=models/my-qa make serve" in out


def test_build_rejects_a_typo_and_a_wrong_type(tmp_path: Path) -> None:
    r = run_cli(
        *("build", CONFIG, "--set", "train.learnig_rate=0.1", "--set", 'windows.doc_stride="32"'),
        *("--work-dir", str(tmp_path / "work")),
    )
    assert r.returncode == 2
    assert (
        "train.learnig_rate: unknown key" in r.stderr
        and "windows.doc_stride: Input should be a valid integer" in r.stderr
    )
    assert not (tmp_path / "work").exists()


def test_until_calibrate_needs_calibration_on(base: Path, tmp_path: Path) -> None:
    r = run_cli(*build_args(tmp_path / "work", tmp_path / "bundle", base, "--until", "calibrate"))
    assert r.returncode == 2 and "--until calibrate needs calibrate.enabled = true" in r.stderr
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------- build, in three steps


def test_build_until_train_as_a_command(trained: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    work, r = trained
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip().splitlines()[-1]) == work / "train" / "final"
    assert (work / "train" / "final" / "config.json").is_file()  # the trained model
    assert "stopped after train" in r.stderr and not (work / "calibrate").exists()


def test_build_until_calibrate_stops_before_the_test_split(calibrated: tuple[Path, Run]) -> None:
    """A choice made on training articles (calibrate.margin, from the cross-fitted figures) must come before
    anything runs on the test split: --until stops there, without retraining."""
    work, r = calibrated
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train: reusing finished" in r.stderr and "stopped after calibrate" in r.stderr
    record_file = Path(r.stdout.strip().splitlines()[-1])
    assert record_file == work / "calibrate" / "calibration.json"
    record = json.loads(record_file.read_text())
    assert "100:103" in str(record["fitted_on"]) and len(record["score_calibration"]) == 2
    # calibrated on the calibration model's own served file, exported before the fit
    assert r.stderr.index(f"-> {work / 'calibrate' / 'served' / 'onnx'}\n") < r.stderr.index("calibration: ")
    # nothing ran on the test split: no export of the shipped model, no scores, no bundle
    assert not (work / "onnx").exists() and not (work.parent / "bundle").exists()
    assert not list(work.glob("eval-*")) and not (work / "calibration-test").exists()


def test_build_goes_on_to_a_bundle_the_service_serves(built: tuple[Path, Run]) -> None:
    work, r = built
    bundle = work.parent / "bundle"
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith(str(bundle))
    # the calibration models train before the shipped model's export, so an interrupted build resumes training first
    log = r.stderr
    assert log.index("model_export.build INFO calibration: ") < log.index(f"-> {work / 'onnx'}\n")
    assert "'logits': 'served'" in log

    m = verify_bundle(bundle)
    assert m.variants == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert m.command.startswith("python -m model_export build")
    assert m.training["steps"] == 4 and m.training["config"]["train_articles"] == "0:30"  # type: ignore[index]
    # each shipped variant is scored on the held-out articles, with both metrics
    assert {(s.variant, s.metric) for s in m.scores} == {(v, k) for v in ("fp32", "int8") for k in ("korquad", "squad")}
    assert all(s.n == 8 and "112:115" in s.split for s in m.scores)
    # fp16 was built, validated and scored but not shipped
    assert m.validation["variants"]["fp16"]["structure"]["inputs"] == m.input_names  # type: ignore[index]
    assert {s["variant"] for s in m.model_extra["unshipped_scores"]} == {"fp16"}  # type: ignore[index]
    assert m.model_extra["int8_method"] == "dynamic, SmoothQuant alpha 0.7"  # type: ignore[index]
    cal = m.calibration
    assert "100:103" in str(cal["fitted_on"]) and cal["fit_models"] == 1
    # the record `--until calibrate` leaves to choose by is the one the bundle carries
    assert json.loads((work / "calibrate" / "calibration.json").read_text()) == cal
    assert (list(m.score_calibration), m.null_threshold) == (cal["score_calibration"], cal["null_threshold"])
    assert "articles 112:115" in m.model_extra["calibration_test"]["measured_on"]  # type: ignore[index]

    # the service loads what the build wrote, as it is, and answers from it
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


def test_build_fails_when_bundle_exceeds_budget(trained: tuple[Path, object], base: Path, tmp_path: Path) -> None:
    work = copy_work(trained[0], tmp_path)
    sets = ["export.max_bundle_mb=0.1", "evaluate.max_examples=2", 'export.variants=["fp32"]']
    sets.append('export.bundle_variants=["fp32"]')
    with pytest.raises(BundleTooLarge, match=r"> 0\.1 MiB"):
        run_cli(*build_args(work, tmp_path / "bundle", base, *(f"--set={s}" for s in sets)))
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.tmp").exists()


# ---------------------------------------------------------------- the single-step verbs


def test_single_verbs_chain(base: Path, tmp_path: Path) -> None:
    """import-base --from-hf -> export -> quantize -> validate, each as its own command."""
    hf = tmp_path / "hf"
    assert run_cli("import-base", "--from-hf", str(base), "--out", str(hf)).returncode == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    onnx_dir = tmp_path / "onnx"
    r = run_cli("export", "--model", str(hf), "--out", str(onnx_dir))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"fp32": str(onnx_dir / "model.onnx"), "fp16": str(onnx_dir / "model.fp16.onnx")}
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
