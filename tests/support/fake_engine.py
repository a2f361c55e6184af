"""A fake Engine for API tests: answers the first occurrence of a marker word, with latency and failure knobs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from app.engine.errors import InferenceFailed, InputTooLarge, Where
from app.engine.interface import Health, QARequest, QAResult
from app.engine.spans import Answer


class FakeEngine:
    def __init__(
        self, latency_s: float = 0.0, fail_on: str | None = None, ready: bool = True, max_context_words: int = 10_000
    ) -> None:
        self.latency_s = latency_s
        self.fail_on = fail_on
        self.ready = ready
        self.alive = True
        self.max_context_words = max_context_words
        self.calls: list[list[QARequest]] = []
        self.started = False

    @property
    def model_name(self) -> str:
        return "fake"

    def health(self) -> Health:
        return Health(alive=self.alive, ready=self.ready and self.alive)

    def model_info(self) -> dict[str, Any]:
        return {
            "id": "fake",
            "name": "fake",
            "languages": ["ko", "en"],
            "max_seq_length": 128,
            "doc_stride": 32,
            "precision": "fp32",
            "execution_provider": "CPUExecutionProvider",
            "scores": [],
        }

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def begin_drain(self) -> None:
        self.ready = False

    def load(self) -> None:
        pass

    async def answer(self, requests: Sequence[QARequest], cancelled: Any = None) -> list[QAResult]:
        for i, r in enumerate(requests):
            for p, passage in enumerate(r.passages):
                if len(passage.split()) > self.max_context_words:
                    raise InputTooLarge("the passage needs too many windows", Where("passage", i, p))
        self.calls.append(list(requests))
        await asyncio.sleep(self.latency_s)
        return [self._one(r) for r in requests]

    def _one(self, r: QARequest) -> QAResult:
        if self.fail_on and self.fail_on in r.question:
            raise InferenceFailed("inference failed: RuntimeError")
        word = r.question.split()[-1].strip("?")
        # the earlier the word sits in its passage, the better: a ranking across passages to check
        found = [(p, passage.find(word)) for p, passage in enumerate(r.passages) if word in passage]
        found.sort(key=lambda t: (t[1], t[0]))
        answers = [
            Answer(word, 1.0 / (rank + 1), start, start + len(word), -float(start), p)
            for rank, (p, start) in enumerate(found)
        ]
        options = r.options
        return QAResult(answers[: options.top_k], 0.0 if options.allow_no_answer else None, len(r.passages))
