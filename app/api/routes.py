"""HTTP routes: they see only the Engine interface, never onnxruntime or tokenizers."""

# no `from __future__ import annotations`: FastAPI must see the per-settings body classes, not strings

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import fastapi_offline
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import auth_dependencies
from app.api.schemas import (
    AnswerResponse,
    BatchAnswerResponse,
    ErrorResponse,
    ReadResponse,
    answer_response,
    read_response,
    request_models,
)
from app.engine.interface import DecodeOptions, Engine, QARequest
from app.metrics import Metrics
from app.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 415, 422, 429, 500, 503, 504)
}


T = TypeVar("T")


def get_engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    # the body is already read, so the next ASGI message is the client's disconnect
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _until_gone(request: Request, call: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    gone = asyncio.Event()
    watcher = asyncio.create_task(_watch_disconnect(request, gone))
    try:
        return await call(gone)
    finally:
        watcher.cancel()


async def _answer_all(request: Request, engine: Engine, items: list[QARequest]) -> list[Any]:
    return await _until_gone(request, lambda gone: engine.answer(items, gone))


def _options(body: Any) -> DecodeOptions:
    return DecodeOptions(
        top_k=body.top_k,
        max_answer_length=body.max_answer_length,
        allow_no_answer=body.allow_no_answer,
        min_score=body.min_score,
        allow_overlap=body.allow_overlap,
        align_to_words=body.align_to_words,
    )


def _to_request(body: Any) -> QARequest:
    return QARequest(body.question, (body.context,), _options(body))


def build_router(settings: Settings) -> APIRouter:
    AnswerRequest, BatchAnswerRequest, ReadRequestBody = request_models(settings)
    router = APIRouter()
    # the QA API needs the bearer token when one is configured (and /openapi.json then says so); probes never do
    qa = APIRouter(dependencies=auth_dependencies(settings))

    @qa.post(
        "/answer",
        response_model=AnswerResponse,
        responses=ERRORS,
        tags=["qa"],
        summary="Answer a question from one passage",
    )
    async def answer(body: AnswerRequest, request: Request, engine: EngineDep) -> AnswerResponse:  # type: ignore[valid-type]
        """Top-k answer spans of `context` for `question`, as character offsets."""
        [result] = await _answer_all(request, engine, [_to_request(body)])
        return answer_response(result, engine.model_name)

    @qa.post(
        "/batch_answer",
        response_model=BatchAnswerResponse,
        responses=ERRORS,
        tags=["qa"],
        summary="Answer several questions, each from its own passage",
    )
    async def batch_answer(body: BatchAnswerRequest, request: Request, engine: EngineDep) -> BatchAnswerResponse:  # type: ignore[valid-type]
        """Several answer requests; results come back in the same order. Any invalid item fails the whole body."""
        results = await _answer_all(request, engine, [_to_request(i) for i in body.items])  # type: ignore[attr-defined]
        return BatchAnswerResponse(results=[answer_response(r, engine.model_name) for r in results])

    @qa.post(
        "/read",
        response_model=ReadResponse,
        responses=ERRORS,
        tags=["qa"],
        summary="Answer one question from a retriever's passages",
    )
    async def read(body: ReadRequestBody, request: Request, engine: EngineDep) -> ReadResponse:  # type: ignore[valid-type]
        """One question over many passages (a retriever's hits): the best spans across all of them, each with the
        index of its passage, ranked on one scale; all windows of all passages batch together."""
        item = QARequest(body.question, tuple(p.text for p in body.passages), _options(body))  # type: ignore[attr-defined]
        [result] = await _answer_all(request, engine, [item])
        return read_response(result, engine.model_name, body.passages, body.return_context)  # type: ignore[attr-defined]

    @router.get("/livez", tags=["health"], summary="Liveness: the process and its batcher run")
    async def livez(engine: EngineDep) -> JSONResponse:
        """The process and its batcher are alive. Never touches the model."""
        h = engine.health()
        return JSONResponse({"status": "alive" if h.alive else "dead", "detail": h.detail}, 200 if h.alive else 503)

    @router.get("/readyz", tags=["health"], summary="Readiness: the model is loaded and can answer now")
    async def readyz(engine: EngineDep) -> JSONResponse:
        """200 once the model is loaded, verified and warmed up; 503 before (or if it failed)."""
        h = engine.health()
        return JSONResponse(
            {"status": "ready" if h.ready else "not_ready", "detail": h.detail}, 200 if h.ready else 503
        )

    limits = {
        "max_question_chars": settings.max_question_chars,
        "max_context_chars": settings.max_context_chars,
        "max_passages": settings.max_passages,
        "max_total_chars": settings.max_total_chars,
        "max_top_k": settings.max_top_k,
    }

    @qa.get("/v1/models", tags=["model"], summary="The served model and the request limits")
    async def models(engine: EngineDep) -> dict[str, Any]:
        """Metadata of the served bundle (name, languages, window sizes, precision, provider, scores), and the
        request limits, so that a client (the demo page) can show them before it sends anything."""
        return {"object": "list", "data": [engine.model_info()], "limits": limits}

    async def metrics(request: Request) -> Response:
        m: Metrics = request.app.state.metrics
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    (qa if settings.metrics_auth else router).add_api_route(
        "/metrics", metrics, methods=["GET"], tags=["health"], include_in_schema=False
    )
    router.include_router(qa)
    return router


def install_docs(app: FastAPI) -> None:
    """/docs: Swagger UI 5 (it reads OpenAPI 3.1) from the files the fastapi-offline package ships.

    ReDoc stays off: its page loads a logo from cdn.redoc.ly.
    """
    app.mount("/docs/assets", StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
        )
