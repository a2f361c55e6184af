"""A request's answers do not depend on what else is queued with it, on the real int8 model.

Dynamic int8 quantizes each matrix product's input with one scale for the whole tensor, so in a padded
batch of several windows one window's values would move another's scale. On a CPU the engine runs one
window per call by default (also the fastest way there, see bench/engine_modes.py), which makes every
window's logits a function of that window alone: the same spans, and scores equal to float precision.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from app.engine.interface import DecodeOptions, QARequest
from app.settings import Settings
from tests.integration.test_read import korquad_passages, ready_engine

TOLERANCE = 1e-6  # the stated tolerance on scores; spans must be identical


async def alone_and_crowded(bundle: Path, runtime: str = "onnxruntime", **settings: object) -> tuple[list, list]:
    engine = await ready_engine(Settings(model_dir=bundle, model_variant="int8", intra_op_threads=1, **settings))
    try:
        passages = korquad_passages(8)
        probe = QARequest("이 글의 주제는 무엇인가?", (passages[0],), DecodeOptions(top_k=5))
        [alone] = await engine.answer([probe])
        others = [
            QARequest(f"질문 {i}은 무엇인가?", (p,), DecodeOptions(top_k=5)) for i, p in enumerate(passages[1:] * 3)
        ]
        results = await asyncio.gather(*(engine.answer([r]) for r in [*others[:12], probe, *others[12:]]))
        crowded = results[12][0]
        assert engine.model_info()["precision"] == "int8" and engine.model_info()["runtime"] == runtime
        return alone.answers, crowded.answers
    finally:
        await engine.stop()


async def test_int8_answers_alone_equal_answers_in_a_crowd(tiny_bundle: Path):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert "int8" in manifest["variants"]
    alone, crowded = await alone_and_crowded(tiny_bundle)
    assert [(a.start, a.end, a.text) for a in alone] == [(a.start, a.end, a.text) for a in crowded]
    for a, b in zip(alone, crowded, strict=True):
        assert abs(a.score - b.score) <= TOLERANCE and abs(a.logit - b.logit) <= TOLERANCE


@pytest.mark.parametrize("windows", [32])
async def test_forced_batching_is_what_the_default_avoids(tiny_bundle: Path, windows: int):
    """With batches forced on, dynamic int8 logits move with the company a window keeps (the reason for the default)."""
    alone, crowded = await alone_and_crowded(tiny_bundle, max_batch_windows=windows, max_delay_ms=20)
    assert max(abs(a.logit - b.logit) for a, b in zip(alone, crowded, strict=False)) > TOLERANCE


async def test_static_int8_on_openvino_answers_alone_equal_answers_in_a_crowd(static_marker_bundle: Path):
    """The OpenVINO path keeps the guarantee too: one window per call, padded to the runtime's multiple only.

    (Forced batches are not invariant there either: on the real model OpenVINO's int8 kernels moved logits
    by up to 0.1 between a window alone and the same window in a batch of 4.)
    """
    alone, crowded = await alone_and_crowded(static_marker_bundle, "openvino")
    assert [(a.start, a.end, a.text) for a in alone] == [(a.start, a.end, a.text) for a in crowded]
    for a, b in zip(alone, crowded, strict=True):
        assert abs(a.score - b.score) <= TOLERANCE and abs(a.logit - b.logit) <= TOLERANCE
