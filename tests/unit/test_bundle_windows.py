"""Window settings the `bundle` command reads from a checkpoint: position limits, training.json, flags."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer

from model_export.export import ExportError
from model_export.pipeline import Windows, check_windows, default_windows, position_limit


def config(model_type: str, mpe: int = 512, pad: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model_type=model_type, max_position_embeddings=mpe, pad_token_id=pad)


NO_LIMIT = SimpleNamespace(model_max_length=int(1e30))


def test_roberta_family_loses_the_padding_offset() -> None:
    assert position_limit(config("xlm-roberta", 514, pad=1), NO_LIMIT) == 512
    assert position_limit(config("bert", 512), NO_LIMIT) == 512
    assert position_limit(config("bert", 512), SimpleNamespace(model_max_length=256)) == 256


def test_defaults_follow_the_squad_recipe_within_the_model_limit() -> None:
    assert default_windows(config("bert"), NO_LIMIT, {}, {}) == Windows(384, 128, 64)
    assert default_windows(config("bert", 128), NO_LIMIT, {}, {}) == Windows(128, 42, 32)


def test_training_json_then_flags() -> None:
    trained = {"config": {"max_seq_length": 256, "doc_stride": 64, "max_query_length": 48}}
    assert default_windows(config("bert"), NO_LIMIT, trained, {}) == Windows(256, 64, 48)
    assert default_windows(config("bert"), NO_LIMIT, trained, {"doc_stride": 32}) == Windows(256, 32, 48)
    # a new length resets what was derived from the old one
    assert default_windows(config("bert"), NO_LIMIT, trained, {"max_seq_length": 128}) == Windows(128, 42, 32)


def test_a_window_longer_than_the_positions_is_refused() -> None:
    with pytest.raises(ExportError, match="exceeds what the model takes"):
        default_windows(config("bert", 128), NO_LIMIT, {}, {"max_seq_length": 256})


def test_stride_that_leaves_no_progress_is_refused(wordpiece: Tokenizer) -> None:
    check_windows(Windows(128, 32, 32), wordpiece)
    with pytest.raises(ExportError, match="lower --doc-stride"):
        check_windows(Windows(128, 100, 32), wordpiece)
