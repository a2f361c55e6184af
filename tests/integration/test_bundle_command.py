"""`python -m model_export bundle MODEL --out DIR` on a tiny checkpoint of each architecture, then the real service.

The command runs in this process (its `main`); each architecture's checkpoint and bundle are made once per module.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import ErnieConfig, ErnieForQuestionAnswering

import model_export.__main__ as cli
from app.engine.bundle import BundleError, verify_bundle
from app.main import create_app
from app.settings import Settings
from model_export import evaluate
from model_export.__main__ import main
from model_export.data import load_examples, load_squad
from tests.integration.test_build_cli import check_served_scores_follow_the_map
from tests.integration.test_service import wait_ready
from tests.integration.test_uvicorn import call, free_port, start
from tests.integration.test_uvicorn import wait_ready as wait_server_ready
from tests.support.tiny_archs import ARCHS, build_checkpoint
from tests.support.tiny_model import KORQUAD_DEV

WINDOW_FLAGS = ["--max-seq-length", "96", "--doc-stride", "24", "--max-query-length", "24"]
WINDOWS = {"max_seq_length": 96, "doc_stride": 24, "max_query_length": 24}
WITH_TYPES = ["input_ids", "attention_mask", "token_type_ids"]
NO_TYPES = ["input_ids", "attention_mask"]
# what each architecture's graph declares; the service must feed exactly these
EXPECTED_INPUTS = {
    "bert": WITH_TYPES,
    "mbert": WITH_TYPES,
    "electra": WITH_TYPES,
    "deberta-v2": WITH_TYPES,
    "xlm-roberta": NO_TYPES,
    "roberta": NO_TYPES,
    "distilbert": NO_TYPES,
}
ENGLISH = (
    "Who designed the tower?",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel's company "
    "and completed in 1889 for the World's Fair.",
)


def korean_pair() -> tuple[str, str]:
    """A training-split question with its paragraph: several windows of 96 tokens."""
    e = next(iter(load_squad(KORQUAD_DEV, "0:1")))
    return e.question, e.context


def bundle(ckpt: Path, out: Path, *extra: str, int8: str | None = "dynamic") -> int:
    """The command on a checkpoint; dynamic int8 unless `int8` says otherwise (None: the command's default, static
    where OpenVINO and NNCF are installed): the architectures' tests are about the export, not the int8 recipe."""
    method = ["--int8-method", int8] if int8 else []
    return main(["bundle", str(ckpt), "--out", str(out), *WINDOW_FLAGS, "--offline", *method, *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A tiny random QA checkpoint of an architecture, made once per module (read it; copy it to change it)."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = build_checkpoint(arch, tmp_path_factory.mktemp(arch) / "ckpt")
        return made[arch]

    return get


@pytest.fixture(scope="module")
def bundled(checkpoint: Callable[[str], Path]) -> Callable[[str], Path]:
    """An architecture's checkpoint bundled by the command with its defaults (all three variants), once."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = checkpoint(arch).parent / "bundle"
            assert bundle(checkpoint(arch), out, "--languages", "ko", "en") == 0
            made[arch] = out
        return made[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_bundle_command_makes_a_bundle_the_service_serves(
    arch: str, checkpoint: Callable[[str], Path], bundled: Callable[[str], Path]
) -> None:
    ckpt, out = checkpoint(arch), bundled(arch)
    m = verify_bundle(out)
    assert m.variants == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    assert m.input_names == EXPECTED_INPUTS[arch], "input names come from the exported graph"
    for name in m.variants.values():
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == m.input_names
    assert (m.max_seq_length, m.doc_stride, m.max_query_length) == (96, 24, 24)
    assert m.command.startswith(f"python -m model_export bundle {ckpt} --out {out}")
    assert m.model_extra["model_type"] == ("bert" if arch == "mbert" else arch)  # type: ignore[index]
    report = m.validation["variants"]
    for variant in ("fp32", "int8"):
        assert report[variant]["numerically_validated"], report[variant]  # type: ignore[index]
    assert report["fp32"]["max_abs_diff"] <= 1e-4  # type: ignore[index]
    # the windowing template is the checkpoint's own: RoBERTa-style <s> q </s></s> c </s>, or [CLS] q [SEP] c [SEP]
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok["truncation"] is None and tok["padding"] is None

    pairs = [korean_pair(), ENGLISH]
    reference = evaluate.open_predictor(str(ckpt), threads=1, windows=WINDOWS)[0].predict(pairs, 5, 30)
    for variant in ("fp32", "auto"):
        settings = Settings(model_dir=out, model_variant=variant, intra_op_threads=1)
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            info = client.get("/v1/models").json()["data"][0]
            assert info["precision"] == ("fp32" if variant == "fp32" else "int8")
            for (question, context), ref in zip(pairs, reference, strict=True):
                r = client.post("/answer", json={"question": question, "context": context, "top_k": 5})
                assert r.status_code == 200, r.text
                body = r.json()
                answers = body["answers"]
                assert answers
                for a in answers:
                    assert 0 <= a["start"] < a["end"] <= len(context)
                    assert context[a["start"] : a["end"]] == a["text"]
                if question == pairs[0][0]:
                    assert body["windows"] > 1
                if variant == "fp32":
                    # the served fp32 graph decodes to PyTorch's spans, with PyTorch's scores
                    ours = {(a["start"], a["end"]): a["score"] for a in answers}
                    theirs = {(s.start, s.end): s.score for s in ref}
                    common = sorted(set(ours) & set(theirs))
                    assert common
                    np.testing.assert_allclose([ours[k] for k in common], [theirs[k] for k in common], atol=1e-4)
                    if len(ref) < 2 or ref[0].score - ref[1].score > 1e-3:
                        assert (answers[0]["start"], answers[0]["end"]) == (ref[0].start, ref[0].end)


def test_bundle_scores_with_eval_data(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    ckpt = checkpoint("xlm-roberta")
    out = tmp_path / "bundle"
    flags = ["--variants", "fp32", "int8", "--eval-data", str(KORQUAD_DEV), "--eval-articles", "0:1"]
    assert bundle(ckpt, out, *flags, "--eval-max-examples", "4", "--threads", "1") == 0
    m = verify_bundle(out)
    assert {(s.variant, s.metric) for s in m.scores} == {(v, k) for v in ("fp32", "int8") for k in ("korquad", "squad")}
    assert all(s.n == 4 and s.dataset == "KorQuAD_v1.0_dev" and "0:1" in s.split for s in m.scores)
    predictions = json.loads((tmp_path / "bundle.work" / "eval-int8" / "predictions.json").read_text())
    assert len(predictions) == 4


def test_bundle_calibrates_on_held_out_questions(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """--calibrate-data fits the score map through the served file (the default int8 here: static, on OpenVINO, as
    the shipped model), by the rule, and records it in the manifest, which still verifies; the service then scores
    by it."""
    ckpt = checkpoint("bert")
    out = tmp_path / "bundle"
    flags = ["--variants", "int8", "--calibrate-data", str(KORQUAD_DEV), "--calibrate-articles", "0:2"]
    assert bundle(ckpt, out, *flags, "--calibrate-metric", "squad", "--threads", "1", int8=None) == 0
    m = verify_bundle(out)
    record = m.calibration
    assert record["metric"] == "squad"
    n = len(load_examples(str(KORQUAD_DEV), "0:2"))
    assert record["fitted_on"] == "KorQuAD_v1.0_dev.json articles 0:2"
    assert record["n_answerable"] == record["n_cross_article"] == n
    assert record["served_by"]["file"] == "model.int8.onnx" and m.files["model.int8.onnx"].runtime == "openvino"
    assert record["served_by"]["runtime"] == "openvino" and record["served_by"]["windows_per_call"] == 1
    spec = m.score_map
    assert spec is not None and spec.kind == spec.model_extra["chosen"]  # type: ignore[index]
    assert spec.model_extra["fitted_on"] == record["fitted_on"]  # type: ignore[index]
    assert "(model.int8.onnx, openvino)" in spec.model_extra["held_out"]  # type: ignore[index]
    assert list(m.score_calibration) == record["score_calibration"] and m.null_threshold == record["null_threshold"]
    assert (tmp_path / "bundle.work" / "calibrate" / "served_logits.npz").is_file()
    question, context = korean_pair()
    check_served_scores_follow_the_map(out, tmp_path, question, context)


def test_a_checkpoint_is_not_calibrated_on_articles_it_trained_on(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model_export train records its articles in training.json: --calibrate-articles among them is refused before
    any export, since a map fitted on questions the model learned would be too sure of itself."""
    ckpt = Path(shutil.copytree(checkpoint("bert"), tmp_path / "ckpt"))
    record = {"config": {"train_file": str(KORQUAD_DEV), "train_articles": "0:100"}}
    (ckpt / "training.json").write_text(json.dumps(record))
    flags = ["--variants", "fp32", "--calibrate-data", str(KORQUAD_DEV), "--calibrate-articles", "98:102"]
    assert bundle(ckpt, tmp_path / "bundle", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("bundle: invalid flags:") and "the checkpoint trained on articles 98:100 of them" in err
    assert not (tmp_path / "bundle.work").exists()


def test_bundle_help_lists_the_choices_and_the_int8_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--variants lists its choices; --int8-method defaults to static (the shipped model's) where OpenVINO and NNCF
    are installed, else to dynamic, and the help says which."""
    for installed, default in ((True, "static"), (False, "dynamic")):
        monkeypatch.setattr(cli, "static_int8_available", lambda installed=installed: installed)
        with pytest.raises(SystemExit):
            main(["bundle", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--variants {fp32,fp16,int8} [{fp32,fp16,int8} ...]" in text
        assert "--int8-method {static,dynamic}" in text
        assert f"Default static where OpenVINO and NNCF are installed, else dynamic (here: {default})" in text
        assert cli.make_parser().parse_args(["bundle", "m", "--out", "o"]).int8_method == default
    monkeypatch.undo()
    want = "static" if all(importlib.util.find_spec(n) for n in ("openvino", "nncf")) else "dynamic"
    assert cli.make_parser().parse_args(["bundle", "m", "--out", "o"]).int8_method == want


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--calibrate-data", str(KORQUAD_DEV), "--calibrate-articles", "3:4"], "fewer than two articles"),
        (
            ["--calibrate-data", str(KORQUAD_DEV), "--calibrate-articles", "200"],
            "articles 200: articles '200': '200' selects none",
        ),
        (["--calibrate-data", str(KORQUAD_DEV.parent / "README.md")], "cannot read them as SQuAD-format"),
        (["--calibrate-data", "missing.json"], "missing.json articles all: cannot read them"),
        (["--calibrate-articles", "0:2"], "need --calibrate-data"),
        (["--calibrate-metric", "squad"], "--calibrate-metric need --calibrate-data"),
    ],
)
def test_calibration_flags_that_cannot_work_are_refused_before_the_export(
    flags: list[str],
    message: str,
    checkpoint: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt = checkpoint("bert")
    assert bundle(ckpt, tmp_path / "bundle", "--variants", "fp32", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("bundle: invalid flags:") and message in err, err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.work").exists()


# ---------------------------------------------------------------- errors a user can act on


def test_checkpoint_without_qa_head_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = build_checkpoint("bert", tmp_path / "ckpt", head=False)
    assert bundle(ckpt, tmp_path / "bundle") == 1
    err = capsys.readouterr().err
    assert "no question-answering head" in err and "BertModel" in err
    assert "*ForQuestionAnswering checkpoint" in err and "model_export train" in err
    assert not (tmp_path / "bundle").exists()


def test_unsupported_model_type_lists_the_supported_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    cfg = ErnieConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ErnieForQuestionAnswering(cfg).save_pretrained(tmp_path / "ckpt")
    assert bundle(tmp_path / "ckpt", tmp_path / "bundle") == 1
    err = capsys.readouterr().err
    assert "'ernie' is not supported by the optimum-onnx exporter" in err
    assert "bert" in err and "xlm-roberta" in err and "deberta-v2" in err and "distilbert" in err


def test_tokenizer_without_a_fast_version_is_refused(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Path(shutil.copytree(checkpoint("bert"), tmp_path / "ckpt"))
    for f in ckpt.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    # CTRL's tokenizer exists only in Python: no offsets
    (ckpt / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<unk>": 3}))
    (ckpt / "merges.txt").write_text("#version: 0.2\na b\n")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CTRLTokenizer"}))
    assert bundle(ckpt, tmp_path / "bundle") == 1
    err = capsys.readouterr().err
    assert "CTRLTokenizer has no fast (Rust) version" in err and "character offsets" in err


def test_missing_tokenizer_is_refused(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = Path(shutil.copytree(checkpoint("electra"), tmp_path / "ckpt"))
    for f in ckpt.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    assert bundle(ckpt, tmp_path / "bundle") == 1
    assert "cannot load its tokenizer" in capsys.readouterr().err


def test_validation_failure_exits_non_zero_with_the_numbers(
    checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint("distilbert")
    tight = json.dumps({"int8": {"atol": 1e-6}})
    assert bundle(ckpt, tmp_path / "bundle", "--tolerances", tight) == 1
    err = capsys.readouterr().err
    assert "validation FAILED: model.int8.onnx (int8) vs PyTorch: max |diff|" in err and "> atol 1e-06" in err
    assert "argmax agreement" in err
    assert "--tolerances" in err and not (tmp_path / "bundle").exists()


def test_bad_variant_flag_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:  # argparse's choices: the usage and the error, status 2
        bundle(tmp_path, tmp_path / "bundle", "--variants", "int4")
    assert e.value.code == 2
    assert "argument --variants: invalid choice: 'int4'" in capsys.readouterr().err


def test_tampered_bundle_from_the_command_is_refused_by_the_service(
    bundled: Callable[[str], Path], tmp_path: Path
) -> None:
    out = bundled("roberta")
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        create_app(Settings(model_dir=copy, intra_op_threads=1, model_variant="fp32"))
    verify_bundle(out)  # the command's own bundle is untouched


@pytest.mark.slow
def test_the_command_s_bundle_served_by_xlm_r_over_http(bundled: Callable[[str], Path]) -> None:
    """As a user runs it: `python -m model_export bundle` (here its `main`), then `python -m app` in a process on its
    output. XLM-R's graph takes no token_type_ids, so this also checks that warmup and batches feed only what it
    declares."""
    out = bundled("xlm-roberta")
    port = free_port()
    proc = start({"QA_MODEL_DIR": str(out), "QA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_server_ready(proc, base)
        question, context = korean_pair()
        status, body = call(base + "/answer", {"question": question, "context": context, "top_k": 3})
        assert status == 200, body
        assert body["windows"] > 1 and body["answers"]
        assert all(context[a["start"] : a["end"]] == a["text"] for a in body["answers"])
        status, body = call(base + "/v1/models")
        assert body["data"][0]["precision"] == "int8" and body["data"][0]["name"] == "ckpt"
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[0].decode()
    assert "loaded on CPUExecutionProvider" in log, log[-2000:]
