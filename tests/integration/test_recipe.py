"""The training recipe's levers on a tiny model: negatives, layer-wise lr decay, the dev-slice sweep, and the
build's calibration models."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForQuestionAnswering

import model_export.build
from app.engine.bundle import read_manifest
from app.engine.windows import WindowSpec
from model_export.build import calibrate_stage, prune_stage
from model_export.calibrate import fit_from_logits, measure_bundle
from model_export.checkpoint import load_tokenizer
from model_export.config import ConfigError, TrainConfig, load_build_config
from model_export.data import cross_article_pairs, load_examples, negative_examples
from model_export.held_out import ServedBundle, checkpoint_logits, load_logits, write_dev_logits
from model_export.sweep import best_trial, results_table, run_sweep
from model_export.train import param_groups
from scripts.confidence_check import main as confidence_check
from tests.support.tiny_archs import build_checkpoint
from tests.support.tiny_model import KORQUAD_DEV

pytestmark = pytest.mark.skipif(not KORQUAD_DEV.is_file(), reason="KorQuAD dev set not found")
TINY_CONFIG = Path(__file__).parents[2] / "configs" / "tiny-smoke.toml"


def test_negatives_never_hold_their_answer_and_come_from_the_split():
    examples = load_examples(str(KORQUAD_DEV), "0:6")
    contexts = {e.context for e in examples}
    negs = negative_examples(examples, 1.0, random.Random(0))
    assert len(negs) > 0.8 * len(examples)
    by_id = {e.id: e for e in examples}
    for n in negs:
        source = by_id[n.id.rsplit("-neg", 1)[0]]
        assert n.answers == () and n.question == source.question
        assert n.context in contexts and n.context != source.context
        assert not any(text in n.context for text, _ in source.answers)
    assert len(negative_examples(examples, 0.5, random.Random(0))) < len(negs)
    cross = cross_article_pairs(examples, random.Random(0))
    assert all(c.title != by_id[c.id.removesuffix("-cross")].title for c in cross)


def test_layer_decay_scales_lr_toward_the_input_and_embeddings_get_no_decay(tiny_bundle: Path):
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bundle.parent / "hf")
    cfg = TrainConfig("", "", "", learning_rate=1e-3, layer_decay=0.5, freeze_word_embeddings=False)
    groups = param_groups(model, cfg)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    n = model.config.num_hidden_layers
    assert lr_of[id(named["qa_outputs.weight"])] == pytest.approx(1e-3)
    last = next(k for k in named if f".layer.{n - 1}." in k and k.endswith("weight") and "LayerNorm" not in k)
    assert lr_of[id(named[last])] == pytest.approx(1e-3 * 0.5)
    emb = next(k for k in named if k.endswith("word_embeddings.weight"))
    assert lr_of[id(named[emb])] == pytest.approx(1e-3 * 0.5 ** (n + 1))
    assert wd_of[id(named[emb])] == 0.0 and wd_of[id(named[last])] == cfg.weight_decay


def test_sweep_scores_every_trial_on_the_dev_slice(tiny_bundle: Path, tmp_path: Path):
    trials = tmp_path / "trials.toml"
    common = "max_steps = 2, max_examples = 12, batch_size = 8, epochs = 1"
    trials.write_text(
        'fit_articles = "0:2"\ndev_articles = "100:101"\n'
        f'[[trial]]\nname = "T1: a"\ntrain = {{ {common}, seed = 1, negatives = 0.5 }}\n'
        f'[[trial]]\nname = "T2: b"\ntrain = {{ {common}, seed = 2 }}\n'
    )
    cfg = load_build_config(TINY_CONFIG, [f'data.file="{KORQUAD_DEV}"'])
    results = run_sweep(cfg, str(tiny_bundle.parent / "hf"), trials, tmp_path / "sweep")
    assert [r["name"] for r in results] == ["T1: a", "T2: b"]
    for r in results:
        assert 0 <= r["final"]["korquad_f1"] <= 100
    record = json.loads((tmp_path / "sweep" / "T1" / "final" / "training.json").read_text())
    assert record["config"]["eval_articles"] == "100:101" and record["config"]["negatives"] == 0.5 and record["dev"]
    assert (record["precision"], record["device"]) == ("fp32", "cpu")  # as resolved, next to the config's ask
    assert best_trial(results)["name"] in ("T1: a", "T2: b")
    assert "| T2: b |" in results_table(results)
    lines = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and np.isfinite(json.loads(lines[0])["final"]["korquad_f1"])


@pytest.mark.parametrize(
    ("trial", "bad"),
    [
        ('name = "E3"\nensemble = ["T1", "T2"]', "['ensemble']"),  # a mean of trials: measured, removed
        ('name = "S"\ntrain = { teachers = ["T1"], distill_alpha = 0.5 }', "['train.teachers', 'train.distill_alpha']"),
        ('name = "T"\ntrain = { learnig_rate = 0.1 }', "['train.learnig_rate']"),
    ],
)
def test_a_trial_the_sweep_cannot_run_is_refused_before_any_training(trial: str, bad: str, tmp_path: Path) -> None:
    trials = tmp_path / "trials.toml"
    trials.write_text(f'fit_articles = "0:2"\ndev_articles = "100:101"\n[[trial]]\nname = "ok"\n[[trial]]\n{trial}\n')
    cfg = load_build_config(TINY_CONFIG, [f'data.file="{KORQUAD_DEV}"'])
    with pytest.raises(ConfigError, match=re.escape(f"unknown keys {bad}")):
        run_sweep(cfg, "no-base-needed", trials, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()


def test_calibration_from_a_checkpoint_and_measured_on_a_bundle(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """The build's calibrate path end to end on the tiny model: dev logits -> fit -> a bundle's test figures."""
    hf = tiny_bundle.parent / "hf"
    m = read_manifest(tiny_bundle)
    w = WindowSpec(m.max_seq_length, m.doc_stride, m.max_query_length)
    dev = load_examples(str(KORQUAD_DEV), "100:102")
    logits = write_dev_logits(lambda exs: checkpoint_logits(hf, exs, w), dev, tmp_path / "dev_logits.npz")
    record, own = fit_from_logits([(logits, "100:102")], str(KORQUAD_DEV), load_tokenizer(str(hf)), w, ())
    assert len(own) == len(dev) and record["n_cross_article"] == len(dev)
    assert 0 <= record["answered_share"] <= 1 and len(record["score_calibration"]) == 2
    assert record["fitted_on"].endswith("articles 100:102") and record["fit_models"] == 1
    assert "cross_fitted" not in record  # one model: nothing to fit on but the questions themselves
    with pytest.raises(ValueError, match="not those of"):
        fit_from_logits([(logits, "101:103")], str(KORQUAD_DEV), load_tokenizer(str(hf)), w, ())
    result = measure_bundle(tiny_bundle, str(KORQUAD_DEV), "120:122", tmp_path / "test")
    assert result["n_answerable"] == result["n_cross_article"] > 0
    assert result["metric"] == "korquad"  # the tiny bundle's calibration record names none: fitted before the choice
    # SQuAD 2.0: a question without an answer is not an answerable question the model got wrong
    squad2 = json.loads(KORQUAD_DEV.read_text(encoding="utf-8"))
    squad2["data"] = squad2["data"][120:122]
    squad2["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "no", "question": "?", "answers": [], "is_impossible": True}
    )
    (tmp_path / "v2.json").write_text(json.dumps(squad2, ensure_ascii=False), encoding="utf-8")
    v2 = measure_bundle(tiny_bundle, str(tmp_path / "v2.json"), "0:2", tmp_path / "v2")
    assert v2["n_answerable"] == result["n_answerable"]
    assert (tmp_path / "test" / "reliability_test.png").stat().st_size > 0
    assert json.loads((tmp_path / "test" / "calibration_test.json").read_text())["ece_before"] >= 0

    # the model card's confidence check: the saved logits and the checkpoint they came from read the same
    capsys.readouterr()
    argv = ["--data", str(KORQUAD_DEV), "--articles", "100:102", "--tokenizer", str(hf), "--max-seq-length"]
    argv += [str(w.max_seq_length), "--doc-stride", str(w.doc_stride), "--max-query-length", str(w.max_query_length)]
    confidence_check([*argv, "--models", str(logits), str(hf)])
    rows = [line.split(": ", 1) for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == [str(logits), str(hf)] and rows[0][1] == rows[1][1]
    assert f"n {len(dev)}, EM " in rows[0][1]


def test_out_of_fold_calibration_scores_every_training_question_with_a_model_that_never_saw_it(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """calibrate.folds = 3: three fold models, each trained without one block of articles, made into the file the
    build ships, and run on that block through it."""
    hf = tiny_bundle.parent / "hf"
    cfg = load_build_config(
        TINY_CONFIG,
        [
            f'data.file="{KORQUAD_DEV}"',
            f'work_dir="{tmp_path / "work"}"',
            'data.train_articles="0:6"',
            "calibrate.enabled=true",
            "calibrate.folds=3",
            "train.max_steps=1",
        ],
    )
    record = calibrate_stage(cfg, hf, hf, ())
    training = load_examples(str(KORQUAD_DEV), "0:6")
    assert record["n_answerable"] == record["n_cross_article"] == len(training)
    assert record["fit_models"] == 3 and record["fitted_on"].endswith("articles 0:2 + 2:4 + 4:6")
    assert 0 <= record["cross_fitted"]["ece"] <= 1 and record["cross_fitted"]["log_loss"] > 0
    assert record["logits"] == "served"
    seen: list[str] = []
    for i, (fit, held) in enumerate([("2:6", "0:2"), ("0:2,4:6", "2:4"), ("0:4", "4:6")], start=1):
        fold = tmp_path / "work" / "calibrate" / f"fold-{i}-of-3"
        assert json.loads((fold / "train" / "final" / "training.json").read_text())["config"]["train_articles"] == fit
        held_out = load_examples(str(KORQUAD_DEV), held)
        with np.load(fold / "served_logits.npz") as z:
            ids, logits = load_logits(z, "own/")
        assert ids == [e.id for e in held_out]
        # the logits are the served file's, one window per call, as the service runs it
        bundle = fold / "served" / "bundle"
        assert read_manifest(bundle).validation and not (fold / "dev_logits.npz").exists()
        for a, b in zip(logits, ServedBundle.open(bundle, 1).logits(held_out), strict=True):
            np.testing.assert_array_equal(np.concatenate([s for s, _ in a]), np.concatenate([s for s, _ in b]))
        seen += ids
        if i == 1:  # stopped after its training, before its logits: the finished model is reused
            (fold / "served_logits.npz").unlink()
        else:  # the logits are what a rerun reuses
            shutil.rmtree(fold / "train")
    assert sorted(seen) == sorted(e.id for e in training)

    def no_training(_cfg: object) -> Path:
        raise AssertionError("a rerun trained again")

    monkeypatch.setattr(model_export.build, "train", no_training)
    assert calibrate_stage(cfg, hf, hf, ()) == record
    # calibrate.margin: the same reused logits, the null margin's weight fitted as well
    with_margin = cfg.model_copy(update={"calibrate": cfg.calibrate.model_copy(update={"margin": True})})
    folds = tmp_path / "work" / "calibrate"
    parts = [(folds / f"fold-{i}-of-3" / "served_logits.npz", a) for i, a in enumerate(("0:2", "2:4", "4:6"), 1)]
    expected, _ = fit_from_logits(parts, str(KORQUAD_DEV), load_tokenizer(hf), cfg.windows.spec, (), margin=True)
    assert calibrate_stage(with_margin, hf, hf, ())["score_calibration"] == expected["score_calibration"]
    with pytest.raises(ValueError, match="at least two articles"):
        calibrate_stage(cfg.model_copy(update={"calibrate": cfg.calibrate.model_copy(update={"folds": 4})}), hf, hf, ())


def test_served_calibration_models_share_the_shipped_vocabulary(tmp_path: Path) -> None:
    """With pruning on, each calibration model is pruned to the shipped model's vocabulary, so the logits of its
    served file line up with the windows the shipped tokenizer cuts; a fold's own vocabulary would not."""
    base = build_checkpoint("xlm-roberta", tmp_path / "base", head=False)
    cfg = load_build_config(
        TINY_CONFIG,
        [
            f'data.file="{KORQUAD_DEV}"',
            f'work_dir="{tmp_path / "work"}"',
            'data.train_articles="0:4"',
            "calibrate.enabled=true",
            "calibrate.folds=2",
            "train.max_steps=1",
            "prune.enabled=true",
            "prune.ascii_top=0",  # ASCII pieces only where the text uses them: the kept set depends on the text
            "prune.latin_top=0",
            "validate.tolerances.int8.atol=1.0",  # this model's wider init spreads 4-bit weight errors further
        ],
    )
    training = load_examples(str(KORQUAD_DEV), "0:4")
    shipped, _ = prune_stage(cfg, base, training, tmp_path / "shipped", measure=False)  # as build prunes its model
    fold_only, _ = prune_stage(cfg, base, load_examples(str(KORQUAD_DEV), "2:4"), tmp_path / "fold-only", False)
    assert (fold_only / "tokenizer.json").read_bytes() != (shipped / "tokenizer.json").read_bytes()

    record = calibrate_stage(cfg, base, shipped, ())  # raises if any fold's windows differ from the shipped ones
    assert record["n_answerable"] == len(training) and record["fit_models"] == 2
    rows = json.loads((base / "config.json").read_text())["vocab_size"]
    for i in (1, 2):
        served = tmp_path / "work" / "calibrate" / f"fold-{i}-of-2" / "served"
        assert (served / "bundle" / "tokenizer.json").read_bytes() == (shipped / "tokenizer.json").read_bytes()
        assert json.loads((served / "pruned" / "config.json").read_text())["vocab_size"] < rows
        assert sorted(read_manifest(served / "bundle").variants) == sorted(cfg.export.shipped)
