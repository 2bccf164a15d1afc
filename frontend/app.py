"""The Sanic app: routes, API key, request ids and error shaping. Thin: the
work happens in serving_*.py and in the other processes."""

from __future__ import annotations

import os
import uuid

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, empty, json, text

from engine_core.config import FrontendConfig
from engine_core.task import EMBEDDING, GENERATE
from frontend.client import EngineClient, EngineDeadError
from frontend.errors import APIError, ServiceUnavailableError, as_api_error, error_body, unauthorized
from frontend.serving_chat import create_chat_completion
from frontend.serving_common import json_response
from frontend.serving_completion import create_completion
from frontend.serving_embedding import create_embedding
from frontend.state import ServerState

HEALTH_TIMEOUT_S = 20.0  # a long prefill step delays the answer; a dead child ends the group anyway
STARTUP_TIMEOUT_S = 600.0
MAX_BODY_BYTES = 16 << 20


def build_app(config: FrontendConfig, model_path: str, task: str, engine_input: str,
              frontend_input: str) -> Sanic:
    app = Sanic("kestrel")
    app.config.REQUEST_MAX_SIZE = MAX_BODY_BYTES
    app.config.KEEP_ALIVE_TIMEOUT = 75
    api_key = config.api_key or os.environ.get("KESTREL_API_KEY", "")

    @app.before_server_start
    async def connect(app: Sanic) -> None:
        client = EngineClient(engine_input, frontend_input)
        client.start()
        # Listen only once the engine has loaded the model and answers through the detokenizer.
        stats = await client.ping(timeout=STARTUP_TIMEOUT_S)
        app.ctx.state = ServerState.create(config, model_path, client, stats.max_model_len, task)

    @app.after_server_stop
    async def disconnect(app: Sanic) -> None:
        await app.ctx.state.client.close()

    @app.on_request
    async def check_api_key(request: Request) -> None:
        request.ctx.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        protected = api_key and request.path.startswith("/v1") and request.method != "OPTIONS"
        if protected and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise unauthorized()

    @app.on_response
    async def echo_request_id(request: Request, response: HTTPResponse) -> None:
        if response is not None and hasattr(request.ctx, "request_id"):
            response.headers["X-Request-Id"] = request.ctx.request_id

    @app.exception(Exception)
    async def to_openai_error(request: Request, exc: Exception) -> HTTPResponse:
        if isinstance(exc, SanicException) and not isinstance(exc, APIError):
            err = APIError(str(exc) or type(exc).__name__)
            err.status = exc.status_code
            err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        else:
            err = as_api_error(exc)
        return json(error_body(err), status=err.status)

    @app.get("/health")
    async def health(request: Request) -> HTTPResponse:
        try:
            await app.ctx.state.client.ping(timeout=HEALTH_TIMEOUT_S)
        except EngineDeadError as exc:
            raise ServiceUnavailableError(str(exc)) from exc
        return empty(status=200)

    @app.get("/version")
    async def version(request: Request) -> HTTPResponse:
        return json({"version": "0.1.0"})

    @app.get("/v1/models")
    async def models(request: Request) -> HTTPResponse:
        return json_response(app.ctx.state.model_list())

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        stats = await app.ctx.state.client.ping(timeout=HEALTH_TIMEOUT_S)
        body = app.ctx.state.metrics.render(stats, app.ctx.state.client.num_aborted)
        return text(body, content_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request):
        app.ctx.state.check_task(GENERATE, "/v1/completions")
        return await create_completion(app.ctx.state, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        app.ctx.state.check_task(GENERATE, "/v1/chat/completions")
        return await create_chat_completion(app.ctx.state, request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        app.ctx.state.check_task(EMBEDDING, "/v1/embeddings")
        return await create_embedding(app.ctx.state, request)

    return app


