"""`python -m app`: parse flags, validate settings, verify the bundle, serve with uvicorn, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

import uvicorn
from pydantic import ValidationError

from app.cli import parse
from app.engine.bundle import BundleError
from app.engine.interface import Engine
from app.main import create_app
from app.settings import Settings

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the engine's drain, and a drained shutdown exits 0."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(self.engine.begin_drain)
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the signal after shutdown (exit 143); a completed drain is a clean exit
                self._captured_signals.clear()


def main(argv: Sequence[str] | None = None) -> int:
    args, flags = parse(argv)
    try:
        settings = Settings(**flags)
    except ValidationError as e:
        print(f"invalid settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        app = create_app(settings)
    except BundleError as e:
        log.error("cannot serve model bundle: %s", e)
        return 3
    engine: Engine = app.state.engine
    if args.check:
        info = {k: v for k, v in engine.model_info().items() if k != "scores"}
        listen = f"{settings.host}:{settings.port}"
        print(
            json.dumps({"settings": "ok", "listen": listen, "bundle": "verified", "model": info}, indent=2, default=str)
        )
        return 0
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        timeout_keep_alive=math.ceil(settings.keep_alive_s),
        proxy_headers=settings.proxy_headers,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    DrainingServer(config, engine).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
