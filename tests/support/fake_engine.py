"""A fake Engine for API tests: answers the first occurrence of a marker word, with latency and failure knobs."""

from __future__ import annotations

import asyncio
from typing import Any

from app.engine.errors import InferenceFailed, InputTooLarge
from app.engine.interface import Health, QARequest, QAResult, ReadRequest
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
        self.calls: list[list[QARequest] | ReadRequest] = []
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

    async def answer(self, requests: list[QARequest], cancelled: Any = None) -> list[QAResult]:
        for i, r in enumerate(requests):
            if len(r.context.split()) > self.max_context_words:
                field = ("items", i, "context") if len(requests) > 1 else ("context",)
                raise InputTooLarge("context needs too many windows", field)
        self.calls.append(requests)
        await asyncio.sleep(self.latency_s)
        out = []
        for r in requests:
            if self.fail_on and self.fail_on in r.question:
                raise InferenceFailed("inference failed: RuntimeError")
            word = r.question.split()[-1].strip("?")
            start = r.context.find(word)
            answers = [Answer(word, 1.0, start, start + len(word), 1.0)] if start >= 0 else []
            out.append(QAResult(answers[: r.top_k], 0.0 if r.allow_no_answer else None, 1))
        return out

    async def read(self, request: ReadRequest, cancelled: Any = None) -> QAResult:
        for p, passage in enumerate(request.passages):
            if len(passage.split()) > self.max_context_words:
                raise InputTooLarge("passage needs too many windows", ("passages", p))
        self.calls.append(request)
        await asyncio.sleep(self.latency_s)
        if self.fail_on and self.fail_on in request.question:
            raise InferenceFailed("inference failed: RuntimeError")
        word = request.question.split()[-1].strip("?")
        # the earlier the word sits in its passage, the better: a ranking across passages to check
        found = [(p, passage.find(word)) for p, passage in enumerate(request.passages) if word in passage]
        found.sort(key=lambda t: (t[1], t[0]))
        answers = [
            Answer(word, 1.0 / (rank + 1), start, start + len(word), -float(start), p)
            for rank, (p, start) in enumerate(found)
        ]
        return QAResult(answers[: request.top_k], 0.0 if request.allow_no_answer else None, len(request.passages))
