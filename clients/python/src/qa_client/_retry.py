"""When to retry and how long to wait: pure bookkeeping, shared by the sync and the async client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

# 429: the queue is full or too long for the server's deadline; 503: loading or draining. Both say when to
# come back (Retry-After). Every other status is final: a 4xx will not change, and a 504 or 500 already cost
# the server a full attempt.
RETRY_STATUSES = frozenset({429, 503})

# No response came back, and the request did not time out waiting for one: the connection was refused or
# broke (a restarting server, a keep-alive connection the server closed). Every endpoint is a pure read, so
# resending is safe. A read timeout is not here: the server may still be working on the first attempt.
RETRY_ERRORS: tuple[type[Exception], ...] = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 30.0  # seconds from the call's start; no retry starts or runs past it
    max_attempts: int = 5  # attempts in all, the first included
    max_wait: float = 10.0  # cap on one sleep, however long Retry-After says
    backoff: float = 0.5  # first sleep when the server gave no Retry-After (connection errors); doubles
    jitter: float = 0.1  # up to this share of a sleep (at least of 1 s) is added at random

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.deadline < 0 or self.max_wait < 0 or self.backoff < 0 or self.jitter < 0:
            raise ValueError("deadline, max_wait, backoff and jitter must not be negative")


class Attempts:
    """One call's attempts against its policy: the timeout of the next attempt, and the sleep before it."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float | None,
        clock: Callable[[], float],
        random: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._timeout = timeout
        self._clock = clock
        self._random = random
        self.started = clock()
        self.made = 0

    def next_timeout(self) -> float | None:
        """Count an attempt and return its timeout: the full one for the first, within the deadline after."""
        self.made += 1
        if self.made == 1:
            return self._timeout
        left = max(0.0, self.policy.deadline - (self._clock() - self.started))
        return left if self._timeout is None else min(self._timeout, left)

    def wait(self, retry_after: float | None) -> float | None:
        """Seconds to sleep before the next attempt, or None: no attempts left, or it would end past the deadline."""
        p = self.policy
        if self.made >= p.max_attempts:
            return None
        base = retry_after if retry_after is not None else p.backoff * 2 ** (self.made - 1)
        wait = min(base, p.max_wait)
        # clients told the same Retry-After would otherwise all come back in the same instant
        wait += self._random() * p.jitter * max(wait, 1.0)
        if self._clock() - self.started + wait >= p.deadline:
            return None
        return wait
