"""Errors the engine raises; app/api/errors.py maps each to one HTTP status."""

from __future__ import annotations


class EngineError(Exception):
    """Base class; `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


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
