"""create_app(settings): middleware, routes, lifespan. No logic of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api import demo, errors
from app.api.auth import KeyRing
from app.api.middleware import (
    BodyLimitMiddleware,
    HeadMiddleware,
    JSONErrorsMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
)
from app.api.routes import build_router, install_docs
from app.engine.interface import Engine
from app.engine.qa import QAEngine
from app.metrics import Metrics
from app.settings import Settings

ROUTES = frozenset({"/answer", "/batch_answer", "/read", "/livez", "/readyz", "/v1/models", "/metrics", "/docs", "/"})
# The routes whose POST body is JSON: anything else there is a 415 that says so, not a 422 about a "dictionary".
JSON_ROUTES = frozenset({"/answer", "/batch_answer", "/read"})
# CORS, when QA_CORS_ORIGINS is set: what a browser page on another origin needs to call the API, and no more.
CORS_METHODS = ("GET", "POST", "OPTIONS")
CORS_HEADERS = ("content-type", "authorization", "x-request-id")
CORS_EXPOSE = ("x-request-id", "retry-after")


def endpoints(settings: Settings) -> list[str]:
    """What a 404 lists: the service's endpoints under these settings."""
    qa = ["POST /answer", "POST /batch_answer", "POST /read", "GET /v1/models"]
    probes = ["GET /livez", "GET /readyz", "GET /metrics"]
    docs = ["GET /docs", "GET /openapi.json"] if settings.docs else []
    return qa + probes + docs + (["GET / (demo page)"] if settings.demo else [])


def default_engine(settings: Settings, metrics: Metrics) -> Engine:
    return QAEngine(settings.engine_config(), metrics)


def create_app(
    settings: Settings | None = None,
    engine_factory: Callable[[Settings, Metrics], Engine] = default_engine,
) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    # Build the engine now: a bundle that fails verification stops start-up with its reason.
    engine = engine_factory(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="Extractive QA",
        version=__version__,
        description="Top-k answer spans (character offsets) of a context for a question. Korean first, English too.",
        lifespan=lifespan,
        # the stock pages load their scripts from a CDN; /docs is served from local assets instead
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.keys = KeyRing(settings)
    app.state.endpoints = endpoints(settings)
    errors.install(app)
    app.include_router(build_router(settings))
    if settings.docs:
        install_docs(app)
    if settings.demo:
        demo.install(app)
    # The last added runs first. From the outside in: ids on everything, metrics on everything, library
    # plain-text errors as JSON, CORS (so that a browser can read even the body checks' errors; a preflight
    # is answered there, before auth), the body checks before parsing, and HEAD as GET next to the routes.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        json_paths=JSON_ROUTES,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSE,
            max_age=600,
        )
    app.add_middleware(JSONErrorsMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=ROUTES)
    app.add_middleware(RequestIdMiddleware)
    return app
