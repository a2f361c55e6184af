"""`python -m model_export build configs/tiny-smoke.toml` end to end on the tiny model, and the single-step verbs.

One build runs as a command in its own process (`--until train`); the rest call the CLI's `main` in this process
and go on from that training, as the same command would on a rerun: `--until calibrate`, then the whole build.
The calibrate verb then measures and refits the bundle that build wrote.
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

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.engine.bundle import Manifest, read_manifest, verify_bundle
from app.engine.config import ModelConfig
from app.engine.served import ServedModel
from app.engine.spans import PassageLogits, ScoreMap, decode_passages
from app.main import create_app
from app.settings import Settings
from model_export.__main__ import main
from model_export.bundle import BundleTooLarge, rewrite_manifest
from model_export.data import load_examples
from tests.integration.test_service import wait_ready
from tests.support.tiny_model import KORQUAD_DEV

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny-smoke.toml")
VERBS = ["import-base", "train", "evaluate", "score", "sweep", "calibrate", "export", "quantize", "validate"]
VERBS += ["build", "bundle"]
# the config's splits, cut down: fewer articles to learn trim rules on, calibrate on and measure on the test split
SPLITS = ['data.train_articles="0:30"', 'data.test_articles="112:115"', 'calibrate.dev_articles="100:103"']
# the manifest fields a calibration sets (calibration.json holds exactly these)
CALIBRATION_FIELDS = ("score_map", "score_calibration", "null_threshold", "calibration")


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


# ---------------------------------------------------------------- served scores against the map


def identity_copy(bundle: Path, out: Path) -> Path:
    """The same bundle (the same files, hashes and logits) with the raw softmax share and P(no answer) =
    sigmoid(null margin): what its candidates score before any fitted map."""
    copy = Path(shutil.copytree(bundle, out))
    raw = read_manifest(copy).model_dump()
    raw |= {"score_map": {"kind": "identity", "null": [1.0, 0.0]}, "score_calibration": [1.0, 0.0]}
    rewrite_manifest(copy, Manifest.model_validate(raw | {"null_threshold": 0.0}))
    return copy


def answer_both(bundle: Path, raw: Path, question: str, context: str, **options: object) -> dict[str, dict]:
    """POST /answer to the service on each bundle."""
    out = {}
    for name, model_dir in (("mapped", bundle), ("raw", raw)):
        with TestClient(create_app(Settings(model_dir=model_dir, intra_op_threads=1))) as client:
            wait_ready(client, 60)
            r = client.post("/answer", json={"question": question, "context": context, **options})
            assert r.status_code == 200, r.text
            out[name] = r.json()
    return out


def check_served_scores_follow_the_map(bundle: Path, tmp: Path, question: str, context: str) -> None:
    """The service's scores on a calibrated bundle are its manifest's map applied to every candidate its served
    file gives (read here through an identity-map copy of the same bundle): each answer's span probability times
    1 - P(no answer), and P(no answer) from the null margin."""
    spec = read_manifest(bundle).score_map
    assert spec is not None
    m = ScoreMap(spec.kind, tuple(spec.params), (spec.null[0], spec.null[1]))
    raw = identity_copy(bundle, tmp / "identity")
    options = {"top_k": 3, "allow_no_answer": True, "min_score": 0.0}  # every top-3 answer, however unlikely
    body = answer_both(bundle, raw, question, context, **options)

    # every candidate of the served file, best first: what the service's ScoreMap sees
    model = ServedModel.open(ModelConfig(model_dir=raw, providers="cpu", threads=1))
    [windows] = model.windows([(question, context)])
    [logits] = model.logits([windows])
    every = decode_passages(
        [PassageLogits(context, windows, [s for s, _ in logits], [e for _, e in logits])],
        top_k=10_000,
        max_answer_length=30,
        top_n=model.config.top_n,
        trim_suffixes=model.manifest.trim_suffixes,
        allow_overlap=True,
    )
    ranked = np.array([a.logit for a in every.answers])
    index = {(a.start, a.end): i for i, a in enumerate(every.answers)}
    margin = every.null_logit - ranked[0]
    for smap, name in ((m, "mapped"), (ScoreMap(), "raw")):
        got = body[name]
        p0 = smap.no_answer(margin)
        assert got["no_answer_score"] == pytest.approx(p0, abs=1e-6)
        spans = smap.spans(ranked, margin)
        want = [(1 - p0) * spans[index[(a["start"], a["end"])]] for a in got["answers"]]
        assert [a["score"] for a in got["answers"]] == pytest.approx(want, abs=1e-6), name
    assert [(a["start"], a["end"]) for a in body["raw"]["answers"]] == [
        (a["start"], a["end"]) for a in body["mapped"]["answers"]
    ]
    # the map changed the scores: it is the fitted one that serves, not the raw share
    assert [a["score"] for a in body["raw"]["answers"]] != [a["score"] for a in body["mapped"]["answers"]]


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
    """The map is fitted through the staged bundle's served file, on the calibration articles only, and --until
    stops there: nothing has run on the test split, and the training is reused."""
    work, r = calibrated
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train: reusing finished" in r.stderr and "stopped after calibrate" in r.stderr
    record_file = Path(r.stdout.strip().splitlines()[-1])
    assert record_file == work / "calibrate" / "calibration.json"
    fields = json.loads(record_file.read_text())
    assert tuple(fields) == CALIBRATION_FIELDS
    spec, record = fields["score_map"], fields["calibration"]
    n = len([e for e in load_examples(str(KORQUAD_DEV), "100:103") if e.answers])
    assert spec["fitted_on"] == record["fitted_on"] == "KorQuAD_v1.0_dev.json articles 100:103"
    assert record["n_answerable"] == record["n_cross_article"] == n
    assert spec["chosen"] == spec["kind"] and "out of article" in spec["rule"]
    assert set(spec["out_of_article"]) == {"identity", "temperature", "platt"}
    # through the staged bundle's served file, a shipped variant, one window per call as the CPU service runs it
    staged = work / "bundle-all"
    served = record["served_by"]
    assert served["file"] in ("model.onnx", "model.int8.onnx") and served["windows_per_call"] == 1
    assert served["sha256"] == verify_bundle(staged).files[served["file"]].sha256
    assert f"{served['file']}, {served['runtime']})" in spec["held_out"]
    assert r.stderr.index(f"-> {work / 'onnx'}\n") < r.stderr.index("model_export.calibrate INFO calibration: ")
    # the staged bundle carries the map it was fitted with; the logits are kept for a rerun
    assert read_manifest(staged).model_dump(include=set(CALIBRATION_FIELDS), mode="json") == fields
    assert (work / "calibrate" / "served_logits.npz").is_file()
    # nothing ran on the test split: no scores, no test figures, no shipped bundle
    assert not list(work.glob("eval-*")) and not (work / "calibration-test").exists()
    assert not (work.parent / "bundle").exists()


def test_build_goes_on_to_a_bundle_the_service_serves(built: tuple[Path, Run], tmp_path: Path) -> None:
    work, r = built
    bundle = work.parent / "bundle"
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith(str(bundle))
    log = r.stderr
    # calibration before any scoring on the test split; the served file is the same, so its logits are reused
    assert log.index("model_export.calibrate INFO calibration: ") < log.index("model_export.stages INFO fp32: ")
    assert "calibrate: reusing the logits in" in log

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
    # the map `--until calibrate` recorded is the one the bundle carries, with the legacy fields old servers read
    fields = json.loads((work / "calibrate" / "calibration.json").read_text())
    assert m.model_dump(include=set(CALIBRATION_FIELDS), mode="json") == fields
    assert m.score_map is not None and m.score_map.model_extra["fitted_on"].endswith("articles 100:103")  # type: ignore[index]
    alpha, beta = m.score_map.null
    assert m.null_threshold == (-beta / alpha if alpha > 0 else 0.0)
    assert list(m.score_calibration) == (list(m.score_map.params) if m.score_map.kind == "platt" else [1.0, 0.0])
    test = m.model_extra["calibration_test"]  # type: ignore[index]
    assert "articles 112:115" in test["measured_on"] and test["score_map"]["kind"] == m.score_map.kind

    # the service loads what the build wrote, as it is, and scores by its map
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
    example = load_examples(str(KORQUAD_DEV), "112:113")[0]
    check_served_scores_follow_the_map(bundle, tmp_path, example.question, example.context)


def test_build_fails_when_bundle_exceeds_budget(trained: tuple[Path, object], base: Path, tmp_path: Path) -> None:
    work = copy_work(trained[0], tmp_path)
    sets = ["export.max_bundle_mb=0.1", "evaluate.max_examples=2", 'export.variants=["fp32"]']
    sets.append('export.bundle_variants=["fp32"]')
    with pytest.raises(BundleTooLarge, match=r"> 0\.1 MiB"):
        run_cli(*build_args(work, tmp_path / "bundle", base, *(f"--set={s}" for s in sets)))
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.tmp").exists()


# ---------------------------------------------------------------- the calibrate verb


def test_calibrate_measures_a_bundle_and_refits_its_map_in_place(built: tuple[Path, Run], tmp_path: Path) -> None:
    """calibrate measures the map on some articles; --fit refits it on articles the model never trained on and
    rewrites the manifest atomically, which still verifies and serves; articles it trained on are refused."""
    bundle = Path(shutil.copytree(built[0].parent / "bundle", tmp_path / "bundle"))
    before = verify_bundle(bundle)
    common = ["calibrate", "--bundle", str(bundle), "--data", str(KORQUAD_DEV), "--threads", "1"]
    r = run_cli(*common, "--articles", "112:115", "--out", str(tmp_path / "test"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "test" / "calibration_test.json").read_text())
    assert json.loads(r.stdout) == result and result["measured_on"] == "KorQuAD_v1.0_dev.json articles 112:115"
    assert result["score_map"]["kind"] == before.score_map.kind  # type: ignore[union-attr]
    assert (tmp_path / "test" / "reliability_test.png").stat().st_size > 0
    assert read_manifest(bundle) == before  # measuring changes nothing

    r = run_cli(*common, "--articles", "103:106", "--out", str(tmp_path / "fit"), "--fit")
    assert r.returncode == 0, r.stderr[-2000:]
    after = verify_bundle(bundle)  # the files are untouched, so the hashes still hold
    fields = json.loads((tmp_path / "fit" / "calibration.json").read_text())
    assert json.loads(r.stdout) == fields == after.model_dump(include=set(CALIBRATION_FIELDS), mode="json")
    assert fields["score_map"]["fitted_on"] == "KorQuAD_v1.0_dev.json articles 103:106"
    assert after.files == before.files and after.scores == before.scores
    assert "calibration_test" not in (after.model_extra or {})  # it measured the previous map
    assert (tmp_path / "fit" / "served_logits.npz").is_file() and (tmp_path / "fit" / "reliability_dev.png").is_file()
    with TestClient(create_app(Settings(model_dir=bundle, intra_op_threads=1))) as client:
        wait_ready(client, 60)
        assert client.post("/answer", json={"question": "수도는?", "context": "서울은 수도이다."}).status_code == 200

    # the model trained on articles 0-29 (its manifest's training record says so): they cannot calibrate it
    r = run_cli(*common, "--articles", "25:35", "--out", str(tmp_path / "bad"), "--fit")
    assert r.returncode == 2 and "the bundle's model trained on 25:30 of them" in r.stderr
    assert verify_bundle(bundle) == after


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
