"""`python -m app`: validate settings, verify the bundle, serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from app.engine.bundle import BundleError
from app.main import create_app
from app.settings import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as e:
        print(f"invalid settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        app = create_app(settings)
    except BundleError as e:
        logging.getLogger("app").error("cannot serve model bundle: %s", e)
        return 3
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        proxy_headers=True,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
