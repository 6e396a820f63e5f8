"""The FastAPI application: lifespan (engine process), auth, limits, errors, routes.

Every failure leaves as an OpenAI-shaped error (``{"error": {...}}``) with its HTTP status; an
unexpected exception is a 500 with a generic message and a log line, never a dead server.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.config import EngineConfig
from engine.default_model import eos_token_ids
from engine.loader import load_config
from engine.tokenizer import load_tokenizer
from runtime.engine_client import EngineClient
from runtime.guard import api_error_of, check_model
from runtime.protocol.codec import encode_json
from runtime.protocol.errors import APIError, authentication, error_body, server_error
from runtime.protocol.server import Health, Model, ModelList
from runtime.state import ServerConfig, ServerState
from sessions.manager import SessionManager, owner_of
from sessions.stores import StoreUnavailableError, open_store
from tools.render import ChatRenderer

logger = logging.getLogger(__name__)


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status)


def api_key_of(headers) -> str | None:
    auth = headers.get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_key(config: ServerConfig, key: str | None) -> None:
    """Raise 401 unless auth is off or ``key`` is one of the configured keys."""
    if not config.api_keys:
        return
    if key is None or not any(secrets.compare_digest(key, k) for k in config.api_keys):
        raise authentication()


def owner(config: ServerConfig, headers) -> str:
    return owner_of(api_key_of(headers)) if config.api_keys else ""


async def build_state(config: ServerConfig, engine_config: EngineConfig) -> ServerState:
    store = open_store(config.session_store)  # before the engine: a bad URL fails at once
    engine = EngineClient(engine_config, log_level=config.log_level)
    ready = await engine.start()
    tokenizer = load_tokenizer(ready.model_path)
    eot = eos_token_ids(load_config(ready.model_path), ready.model_path)[0]
    return ServerState(
        config=config, engine=engine, ready=ready, tokenizer=tokenizer,
        renderer=ChatRenderer(tokenizer, eot),
        sessions=SessionManager(store, lease_s=config.lease_s))


def _stop_server(why: str) -> None:
    """The engine died (e.g. a tensor-parallel rank exited): in-flight requests have failed;
    end the server the way SIGTERM does, so a supervisor sees it go and restarts it."""
    logger.critical("engine is dead (%s); shutting the server down", why)
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(config: ServerConfig, engine_config: EngineConfig) -> FastAPI:
    from runtime import chat, completions, responses, tokenize, ws

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.server = await build_state(config, engine_config)
        app.state.server.engine.on_dead = _stop_server
        logger.warning("serving %s on http://%s:%d", app.state.server.model_name, config.host,
                       config.port)
        try:
            yield
        finally:
            await app.state.server.engine.shutdown()
            await app.state.server.sessions.close()  # a last flush of turns waiting for the store

    app = FastAPI(title="agentspeed", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if _needs_key(request.url.path):
                check_key(config, api_key_of(request.headers))
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
                raise APIError(413, f"Request body exceeds {config.max_body_bytes} bytes.",
                               param=None, code="request_too_large")
            return await call_next(request)
        except APIError as err:
            return error_response(err)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, err: APIError):
        return error_response(err)

    @app.exception_handler(StoreUnavailableError)
    async def on_store_unavailable(request: Request, exc: StoreUnavailableError):
        return error_response(api_error_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s", request.url.path)
        return error_response(server_error())

    @app.get("/health")
    async def health(request: Request):
        state: ServerState = request.app.state.server
        alive = state.engine.is_alive
        return _json(Health(status="ok" if alive else "engine_dead"), 200 if alive else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        state: ServerState = request.app.state.server
        return _json(ModelList(data=[_model(state)]))

    @app.get("/v1/models/{model_id}")
    async def model(request: Request, model_id: str):
        state: ServerState = request.app.state.server
        check_model(state, model_id)
        return _json(_model(state))

    @app.post("/tokenize")
    async def tokenize_route(request: Request):
        return tokenize.tokenize(request.app.state.server, await _body(request, config))

    @app.post("/detokenize")
    async def detokenize_route(request: Request):
        return tokenize.detokenize(request.app.state.server, await _body(request, config))

    @app.get("/metrics")
    async def metrics(request: Request):
        state: ServerState = request.app.state.server
        return Response(state.metrics.render(state.engine.stats),
                        media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await chat.handle(request.app.state.server, await _body(request, config),
                                 owner(config, request.headers))

    @app.post("/v1/completions")
    async def text_completions(request: Request):
        return await completions.handle(request.app.state.server, await _body(request, config),
                                        owner(config, request.headers))

    @app.post("/v1/responses")
    async def create_response(request: Request):
        state = request.app.state.server
        return await responses.handle_http(state, await _body(request, config),
                                           owner(config, request.headers))

    @app.get("/v1/responses/{response_id}")
    async def get_response(request: Request, response_id: str):
        state = request.app.state.server
        return await responses.get(state, response_id, owner(config, request.headers))

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(request: Request, response_id: str):
        state = request.app.state.server
        return await responses.delete(state, response_id, owner(config, request.headers))

    @app.websocket("/v1/responses")
    async def responses_socket(websocket: WebSocket):
        await ws.serve_socket(websocket.app.state.server, websocket)

    return app


def _needs_key(path: str) -> bool:
    """The API, the tokenizer routes and the metrics need a key (when keys are set);
    ``/health`` stays open for liveness probes."""
    return path.startswith("/v1/") or path in ("/metrics", "/tokenize", "/detokenize")


def _model(state: ServerState) -> Model:
    return Model(id=state.model_name, created=int(time.time()),
                 max_model_len=state.ready.max_model_len)


def _json(body, status: int = 200) -> Response:
    return Response(encode_json(body), status_code=status, media_type="application/json")


async def _body(request: Request, config: ServerConfig) -> bytes:
    """The request body, refused past the size limit even without a Content-Length."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > config.max_body_bytes:
            raise APIError(413, f"Request body exceeds {config.max_body_bytes} bytes.",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)
