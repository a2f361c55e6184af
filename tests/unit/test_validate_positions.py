"""Validation compares the logits decoding reads: [CLS] and the context, not the question or separators."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from app.engine.windows import WindowSpec
from model_export.validate import compare, validation_batches, validation_windows

PAIRS = [
    ("대한민국의 수도는?", "대한민국의 수도는 서울이다. 서울은 한강을 끼고 있다. " * 6),
    ("Who wrote it?", "Pride and Prejudice is a novel written by Jane Austen."),
    ("어디?", "부산은 항구 도시이다."),
]


def test_only_cls_and_context_positions_are_compared(tokenizer: Tokenizer) -> None:
    windows = validation_windows(tokenizer, PAIRS, WindowSpec(48, 16, 16))
    batches, decoded = validation_batches(windows, 0)
    assert sum(len(b["input_ids"]) for b in batches) == len(windows)
    for b, mask in zip(batches, decoded, strict=True):
        real = b["attention_mask"].astype(bool)
        assert mask.shape == real.shape
        assert mask[:, 0].all() and not (mask & ~real).any()  # [CLS], and never padding
        assert (real & ~mask).any(axis=1).all()  # every window has question and separator tokens left out

    rng = np.random.default_rng(0)
    ref = [(rng.normal(0, 5, b["input_ids"].shape), rng.normal(0, 5, b["input_ids"].shape)) for b in batches]

    # int8 moving a question or separator token by 5 costs no span anything
    outside = [(s + np.where(mask, 0.0, 5.0), e) for (s, e), mask in zip(ref, decoded, strict=True)]
    stats = compare(outside, ref, batches, decoded)
    assert stats["max_abs_diff"] == stats["mean_abs_diff"] == 0.0

    # the same move on a context token, or on [CLS] (the null answer), is what validation exists to catch
    for column in ("context", "cls"):
        moved = []
        for (s, e), mask in zip(ref, decoded, strict=True):
            at = np.zeros_like(s)
            for row in range(len(s)):
                at[row, np.flatnonzero(mask[row])[1 if column == "context" else 0]] = 5.0
            moved.append((s + at, e))
        assert compare(moved, ref, batches, decoded)["max_abs_diff"] == pytest.approx(5.0), column
