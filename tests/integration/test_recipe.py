"""The training recipe's levers on a tiny model: negatives, layer-wise lr decay and the dev-slice sweep. (The build's
calibration is tested through the build itself, tests/integration/test_build_cli.py.)"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForQuestionAnswering

from model_export.config import ConfigError, TrainConfig, load_build_config
from model_export.data import cross_article_pairs, load_examples, negative_examples
from model_export.sweep import best_trial, results_table, run_sweep
from model_export.train import param_groups
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
