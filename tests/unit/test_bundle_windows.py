"""Window settings the `bundle` command reads from a checkpoint: position limits, training.json, flags; and a
checkpoint's training.json from older code."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer

from app.engine.windows import WindowSpec
from model_export.checkpoint import (
    ExportError,
    check_windows,
    checkpoint_windows,
    default_windows,
    position_limit,
    training_record,
)
from model_export.config import TrainConfig


def config(model_type: str, mpe: int = 512, pad: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model_type=model_type, max_position_embeddings=mpe, pad_token_id=pad)


NO_LIMIT = SimpleNamespace(model_max_length=int(1e30))


def test_roberta_family_loses_the_padding_offset() -> None:
    assert position_limit(config("xlm-roberta", 514, pad=1), NO_LIMIT) == 512
    assert position_limit(config("bert", 512), NO_LIMIT) == 512
    assert position_limit(config("bert", 512), SimpleNamespace(model_max_length=256)) == 256


def test_defaults_follow_the_squad_recipe_within_the_model_limit() -> None:
    assert default_windows(config("bert"), NO_LIMIT, {}, {}) == WindowSpec(384, 128, 64)
    assert default_windows(config("bert", 128), NO_LIMIT, {}, {}) == WindowSpec(128, 42, 32)


def test_training_json_then_flags() -> None:
    trained = {"config": {"max_seq_length": 256, "doc_stride": 64, "max_query_length": 48}}
    assert default_windows(config("bert"), NO_LIMIT, trained, {}) == WindowSpec(256, 64, 48)
    assert default_windows(config("bert"), NO_LIMIT, trained, {"doc_stride": 32}) == WindowSpec(256, 32, 48)
    # a new length resets what was derived from the old one
    assert default_windows(config("bert"), NO_LIMIT, trained, {"max_seq_length": 128}) == WindowSpec(128, 42, 32)


def test_a_window_longer_than_the_positions_is_refused() -> None:
    with pytest.raises(ExportError, match="exceeds what the model takes"):
        default_windows(config("bert", 128), NO_LIMIT, {}, {"max_seq_length": 256})


def test_stride_that_leaves_no_progress_is_refused(wordpiece: Tokenizer) -> None:
    check_windows(WindowSpec(128, 32, 32), wordpiece)
    with pytest.raises(ExportError, match="lower --doc-stride"):
        check_windows(WindowSpec(128, 100, 32), wordpiece)


# training.json's config as the code before distillation's removal wrote it (the running training job's
# checkpoint has one): teachers, distill_alpha and distill_temperature are fields TrainConfig no longer has
OLD_RECORD = {
    "config": {
        "base_model": "runs/korquad-e5-small/base",
        "train_file": "../shared/data/korquad/KorQuAD_v1.0_dev.json",
        "output_dir": "runs/korquad-e5-small/train",
        "train_articles": "0:112",
        "max_seq_length": 256,
        "doc_stride": 64,
        "max_query_length": 48,
        "epochs": 3,
        "batch_size": 32,
        "grad_accum": 1,
        "learning_rate": 0.0001,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "max_grad_norm": 1.0,
        "seed": 43,
        "freeze_word_embeddings": False,
        "layer_decay": 1.0,
        "negatives": 0.5,
        "eval_articles": None,
        "teachers": [],
        "distill_alpha": 0.5,
        "distill_temperature": 2.0,
        "save_every": 50,
        "keep_checkpoints": 2,
        "max_steps": None,
        "max_examples": None,
        "threads": None,
        "precision": "auto",
        "extra": {},
    },
    "precision": "bf16",
    "steps": 744,
    "dev": [],
}


def test_a_checkpoint_trained_by_older_code_still_reads(tmp_path: Path) -> None:
    """Its training.json goes into the manifest as it is, its windows are the bundle's and evaluate's defaults, and
    as a TrainConfig it reads without the removed fields."""
    (tmp_path / "training.json").write_text(json.dumps(OLD_RECORD))
    training = training_record(tmp_path)
    assert training == OLD_RECORD
    assert default_windows(config("bert"), NO_LIMIT, training, {}) == WindowSpec(256, 64, 48)
    assert checkpoint_windows(tmp_path, {"doc_stride": 32}) == WindowSpec(256, 32, 48)
    cfg = TrainConfig.from_record(training["config"])
    removed = {"teachers", "distill_alpha", "distill_temperature"}
    assert asdict(cfg) == {k: v for k, v in OLD_RECORD["config"].items() if k not in removed}
    assert cfg.windows == WindowSpec(256, 64, 48)
    with pytest.raises(TypeError, match="teachers"):  # what reading it without from_record would do
        TrainConfig(**training["config"])
