"""The engine interface the HTTP layer sees: requests in, ranked spans out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.spans import Answer


@dataclass(frozen=True)
class QARequest:
    question: str
    context: str
    top_k: int = 1
    max_answer_length: int = 30
    allow_no_answer: bool = False
    min_score: float | None = None
    allow_overlap: bool = False
    align_to_words: bool = False


@dataclass(frozen=True)
class ReadRequest:
    """One question over several passages (a retriever's hits), answered on one score scale."""

    question: str
    passages: tuple[str, ...]
    top_k: int = 1
    max_answer_length: int = 30
    allow_no_answer: bool = False
    min_score: float | None = None
    allow_overlap: bool = False
    align_to_words: bool = False


@dataclass(frozen=True)
class QAResult:
    answers: list[Answer]
    no_answer_score: float | None
    windows: int  # model windows over all passages


@dataclass
class Health:
    alive: bool
    ready: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """What routes call. A fake implements it for unit tests; QAEngine for real."""

    @property
    def model_name(self) -> str: ...

    def health(self) -> Health: ...

    def model_info(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def begin_drain(self) -> None:
        """Shutdown has begun: turn unready, refuse new work, bound how long in-flight work may take."""
        ...

    async def answer(self, requests: list[QARequest], cancelled: Any = None) -> list[QAResult]:
        """Answer all requests or raise an EngineError; every request is validated before any runs.

        `cancelled` is an optional asyncio.Event set when the client goes away.
        """
        ...

    async def read(self, request: ReadRequest, cancelled: Any = None) -> QAResult:
        """Answer one question over all its passages at once: every window of every passage batches together,
        and answers from all passages are ranked on one scale, each with its `passage` index."""
        ...
