"""create_app(settings): middleware, routes, lifespan. No logic of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api import demo, errors
from app.api.auth import KeyRing
from app.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from app.api.routes import build_router, install_docs
from app.engine.interface import Engine
from app.metrics import Metrics
from app.settings import Settings

ROUTES = frozenset({"/answer", "/batch_answer", "/read", "/livez", "/readyz", "/v1/models", "/metrics", "/docs", "/"})


def default_engine(settings: Settings, metrics: Metrics) -> Engine:
    # imported here so the HTTP layer's modules never import onnxruntime or tokenizers themselves
    from app.engine.qa import QAEngine

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
    errors.install(app)
    app.include_router(build_router(settings))
    if settings.docs:
        install_docs(app)
    if settings.demo:
        demo.install(app)
    # outermost first: ids on everything, metrics on everything, then the body limit before parsing
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=ROUTES)
    app.add_middleware(RequestIdMiddleware)
    return app
