"""`python -m app`: parse flags, check settings, bind the port, load and warm up the model, then serve."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from app.cli import EXIT_BIND, EXIT_BUNDLE, EXIT_OK, EXIT_USAGE, describe, fail, parse, settings_errors
from app.engine.bundle import BundleError
from app.engine.interface import Engine
from app.main import create_app
from app.server import bind, build_server
from app.settings import Settings, check_environment

log = logging.getLogger("app")

_PYDANTIC_URL = re.compile(r"^\s*For further information visit https://errors\.pydantic\.dev\S*\s*$")


def one_line(text: str) -> str:
    """A reason on one line: multi-line messages (a manifest's validation errors) joined, library URLs dropped."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip() and not _PYDANTIC_URL.match(line)]
    return "; ".join(parts)


def load(settings: Settings) -> Any:
    """The app with its engine verified, loaded and warmed up (QAEngine.load); raises BundleError."""
    app = create_app(settings)
    engine: Engine = app.state.engine
    engine.load()
    return app


def try_bind(settings: Settings) -> tuple[socket.socket | None, str]:
    try:
        return bind(settings.host, settings.port), ""
    except OSError as e:
        where = f"{describe('host')} {settings.host}, {describe('port')} {settings.port}"
        return None, f"cannot listen on {settings.host}:{settings.port} ({where}): {e.strerror or e}"


def check(settings: Settings, app: Any, bind_error: str) -> int:
    """--check: what serving would use, and the exit code serving would have."""
    info = app.state.engine.model_info()
    model = {
        k: info.get(k)
        for k in ("name", "precision", "file", "variant_reason", "runtime", "runtime_reason", "execution_provider")
    }
    summary = {
        "settings": "ok",
        "listen": f"{settings.host}:{settings.port}",
        "port": bind_error or "free",
        "bundle": "verified",
        "model_load": "loaded and warmed up" if settings.warmup else "loaded (QA_WARMUP off)",
        "model": model,
        "auth": app.state.keys.describe(),
        "cors_origins": settings.cors_origins,
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return EXIT_BIND if bind_error else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args, flags = parse(argv)  # exits 2, with one line, on a malformed flag
    env_errors, env_warnings = check_environment(os.environ)
    try:
        settings = Settings(**flags)
    except ValidationError as e:
        return fail(env_errors + settings_errors(e), EXIT_USAGE)
    if env_errors:
        return fail(env_errors, EXIT_USAGE)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for warning in env_warnings:
        log.warning("%s", warning)

    # The port first, so that a busy one fails at once; it listens only once the model is ready.
    sock, bind_error = (None, "") if args.check else try_bind(settings)
    if bind_error:
        return fail([bind_error], EXIT_BIND)
    try:
        app = load(settings)
    except BundleError as e:
        if sock is not None:
            sock.close()
        return fail([f"bad model bundle ({describe('model_dir')}): {one_line(str(e))}"], EXIT_BUNDLE)
    if args.check:
        probe, bind_error = try_bind(settings)
        if probe is not None:
            probe.close()
        return check(settings, app, bind_error)
    assert sock is not None
    log.info("auth: %s", app.state.keys.describe())
    if settings.cors_origins:
        log.info("CORS: origins %s", ", ".join(settings.cors_origins))
    build_server(app, settings, app.state.engine).run(sockets=[sock])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
