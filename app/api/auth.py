"""Optional bearer-token authentication for the QA endpoints; probes never need it."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Request

from app.api.errors import Unauthorized
from app.settings import Settings


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
