"""The engine interface the HTTP layer sees: requests in, ranked spans out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.spans import Answer


@dataclass(frozen=True)
class DecodeOptions:
    """What a question asks of decoding (app.engine.spans.decode_passages explains each)."""

    top_k: int = 1
    max_answer_length: int = 30  # tokens
    allow_no_answer: bool = False
    min_score: float | None = None
    allow_overlap: bool = False
    align_to_words: bool = False


@dataclass(frozen=True)
class QARequest:
    """One question over one or more passages, answered on one score scale (/answer sends one passage, /read a
    retriever's hits); each answer carries the index of its passage."""

    question: str
    passages: tuple[str, ...]
    options: DecodeOptions = DecodeOptions()


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

    def load(self) -> None:
        """Load and warm up the model before the server accepts connections; a bundle that cannot run raises
        app.engine.bundle.BundleError with its reason in one line."""
        ...

    async def answer(self, requests: Sequence[QARequest], cancelled: Any = None) -> list[QAResult]:
        """Answer all requests or raise an EngineError naming the input at fault (`Where`); every request is
        validated before any runs, and all their windows batch together. `cancelled` is an optional
        asyncio.Event set when the client goes away."""
        ...
