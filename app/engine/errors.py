"""Errors the engine raises; app/api/errors.py maps each to one HTTP status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["question", "passage", "passages", "request"]


@dataclass(frozen=True)
class Where:
    """What part of a call is at fault, in the engine's terms: the `item`-th question of the call, and its
    question, one of its passages (`passage`), all its passages together, or the whole call. The HTTP layer
    turns it into the JSON path of its own body (app/api/errors.py)."""

    side: Side
    item: int = 0
    passage: int = 0


class EngineError(Exception):
    """Base class; `where` names the input at fault, when there is one."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


class InvalidInput(EngineError):
    """Valid JSON whose text the model cannot use (it tokenizes to nothing)."""


class InputTooLarge(EngineError):
    """The input is valid JSON but needs more windows than a request may use."""


class Overloaded(EngineError):
    """The queue cannot take this request in time; the client should back off and retry."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(EngineError):
    """The request waited past its deadline."""


class ShuttingDown(EngineError):
    """The server is draining: it takes no new work, and what the drain window could not finish ends here."""


class ClientDisconnected(EngineError):
    """The client went away before its answer was ready; its remaining windows were dropped."""


class InferenceFailed(EngineError):
    """The batch holding this request failed in ONNX Runtime; other batches are unaffected."""


class NotReady(EngineError):
    """The model is not loaded (or failed to load), or inference has stalled."""
