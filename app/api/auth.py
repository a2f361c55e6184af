"""Optional bearer-token authentication for the QA endpoints; probes never need it."""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from app.api.errors import Unauthorized
from app.settings import Settings

# Only documents the scheme in /openapi.json (and gives /docs its Authorize button); require_key decides.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="QA_API_KEY, or a line of QA_API_KEYS_FILE: `Authorization: Bearer <key>`",
)


class KeyRing:
    """The accepted tokens: QA_API_KEY plus the lines of QA_API_KEYS_FILE, re-read when the file changes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._file: Path | None = settings.api_keys_file
        self._mtime: float | None = None
        self._keys: list[bytes] = []
        self._load()

    def _load(self) -> None:
        self._mtime = os.stat(self._file).st_mtime if self._file is not None else None
        self._keys = [k.encode() for k in self.settings.api_keys()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._file is not None

    def __len__(self) -> int:
        return len(self._keys)

    def describe(self) -> str:
        """For the start-up log: never the keys themselves."""
        if not self.enabled:
            return "off (QA_API_KEY and QA_API_KEYS_FILE unset: the QA API is open)"
        sources = [n for n, on in (("QA_API_KEY", self.settings.api_key), ("QA_API_KEYS_FILE", self._file)) if on]
        return f"on ({len(self)} key{'s' if len(self) != 1 else ''}, from {' and '.join(sources)})"

    def check(self, token: str) -> bool:
        if self._file is not None:
            try:
                if os.stat(self._file).st_mtime != self._mtime:
                    self._load()  # key rotation without a restart
            except OSError:
                pass  # keep the last good keys while the file is being replaced
        given = token.encode()
        # compare against every key, without stopping early, so timing says nothing about which matched
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        return ok


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def auth_dependencies(settings: Settings) -> list[Any]:
    """The QA routes' dependencies: the key check, and with auth on the bearer scheme for the OpenAPI document."""
    deps: list[Any] = [Depends(require_key)]
    if settings.auth_on:
        deps.append(Security(BEARER))
    return deps


def require_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries one of the configured bearer tokens."""
    ring: KeyRing = request.app.state.keys
    if not ring.enabled:
        return
    token = bearer_token(request)
    if not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <key>'")
    if not ring.check(token):
        raise Unauthorized("invalid bearer token")
