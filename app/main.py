"""create_app(settings): middleware, routes, lifespan. No logic of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import demo, errors
from app.api.middleware import BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from app.api.routes import build_router
from app.engine.interface import Engine
from app.metrics import Metrics
from app.settings import Settings

ROUTES = frozenset({"/answer", "/batch_answer", "/read", "/livez", "/readyz", "/v1/models", "/metrics", "/"})


def default_engine(settings: Settings, metrics: Metrics) -> Engine:
    # imported here so the HTTP layer's modules never import onnxruntime or tokenizers themselves
    from app.engine.qa import QAEngine

    return QAEngine(settings, metrics)


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
        version="0.1.0",
        description="Top-k answer spans (character offsets) of a context for a question. Korean first, English too.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    errors.install(app)
    app.include_router(build_router(settings))
    if settings.demo:
        demo.install(app)
    # outermost first: ids on everything, metrics on everything, then the body limit before parsing
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=ROUTES)
    app.add_middleware(RequestIdMiddleware)
    return app
