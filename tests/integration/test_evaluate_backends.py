"""evaluate on the tiny checkpoint and its exported bundle: both backends give the same answers through one path."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.engine.bundle import BundleError, read_manifest
from model_export import evaluate
from model_export.data import load_squad
from tests.support.tiny_model import KORQUAD_DEV

ARTICLES = "112:113"


def test_checkpoint_and_bundle_agree(tiny_bundle: Path, tmp_path: Path):
    checkpoint = tiny_bundle.parent / "hf"  # build_tiny_bundle exports the checkpoint it writes here
    manifest = read_manifest(tiny_bundle)
    windows = {
        "max_seq_length": manifest.max_seq_length,
        "doc_stride": manifest.doc_stride,
        "max_query_length": manifest.max_query_length,
    }
    results = {}
    for name, path, variant in (("ckpt", checkpoint, "auto"), ("fp32", tiny_bundle, "fp32")):
        results[name] = evaluate.evaluate_model(
            str(path), str(KORQUAD_DEV), ARTICLES, tmp_path / name, variant, batch_size=8, threads=1, windows=windows
        )
    assert (results["ckpt"]["variant"], results["fp32"]["variant"]) == ("checkpoint", "fp32")
    assert results["ckpt"]["n"] == results["fp32"]["n"] > 0

    examples = {e.id: e for e in load_squad(KORQUAD_DEV, ARTICLES)}
    nbest = {n: json.loads((tmp_path / n / "nbest.json").read_text(encoding="utf-8")) for n in results}
    for qid, ranked in nbest["ckpt"].items():
        ours = {(a["start"], a["end"]): a["score"] for a in ranked}
        theirs = {(a["start"], a["end"]): a["score"] for a in nbest["fp32"][qid]}
        common = sorted(set(ours) & set(theirs))
        assert common
        np.testing.assert_allclose([ours[k] for k in common], [theirs[k] for k in common], atol=1e-4)
        # random weights make near-ties; only a clear winner has to be the same on both backends
        if len(ranked) < 2 or ranked[0]["score"] - ranked[1]["score"] > 1e-3:
            assert (nbest["fp32"][qid][0]["start"], nbest["fp32"][qid][0]["end"]) == (
                ranked[0]["start"],
                ranked[0]["end"],
            )
        for a in ranked:
            assert examples[qid].context[a["start"] : a["end"]] == a["text"]


def test_auto_variant_on_cpu_is_int8(tiny_bundle: Path):
    result = evaluate.evaluate_model(str(tiny_bundle), str(KORQUAD_DEV), "112:113", threads=1)
    assert result["variant"] == "int8"
    assert 0 <= result["korquad"]["f1"] <= 100


def test_bundle_with_a_tampered_file_is_refused(tiny_bundle: Path, tmp_path: Path):
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in tiny_bundle.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    copy.joinpath("tokenizer.json").write_bytes(tiny_bundle.joinpath("tokenizer.json").read_bytes() + b" ")
    with pytest.raises(BundleError, match=r"tokenizer\.json"):
        evaluate.open_predictor(str(copy), variant="fp32", threads=1)
