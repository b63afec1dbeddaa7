"""The FastAPI app (OpenAI-compatible endpoints) and its uvicorn runner with graceful shutdown."""
from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import threading
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import podserve
from podserve.engine.async_engine import AsyncEngine
from podserve.entrypoints.openai.errors import OpenAIError, error_body, error_response, validation_error
from podserve.entrypoints.openai.prom_metrics import CONTENT_TYPE, ServerMetrics
from podserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from podserve.entrypoints.openai.serving import OpenAIServing

logger = logging.getLogger("podserve.server")

# Paths that need the API key when one is set (as in vLLM: the OpenAI API, not ops endpoints).
_PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


class _ApiKeyMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnects pass untouched."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(_PROTECTED_PREFIXES):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                response = JSONResponse(error_body(401, "invalid or missing API key", code="invalid_api_key"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(async_engine: AsyncEngine, served_model_names: list[str] | None = None, api_key: str | None = None) -> FastAPI:
    """An app serving ``async_engine``; its lifespan starts and stops the engine thread."""
    engine = async_engine.engine
    names = served_model_names or [engine.model_name]
    serving = OpenAIServing(async_engine, names)
    metrics = ServerMetrics(async_engine, names[0])
    async_engine.output_listeners.append(metrics.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        try:
            yield
        finally:
            async_engine.shutdown()  # after uvicorn drained connections: aborts leftovers

    app = FastAPI(title="podserve", version=podserve.__version__, lifespan=lifespan)
    app.state.async_engine = async_engine
    app.state.metrics = metrics
    if api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=api_key)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(validation_error(list(exc.errors())))  # 400, not FastAPI's 422

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        logger.exception("request %s failed", request.url.path)
        return JSONResponse(error_body(500, f"internal error: {exc!r}"), status_code=500)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw: Request):
        return await serving.completion(body, raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw: Request):
        return await serving.chat(body, raw)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=name, max_model_len=serving.max_model_len, vocab_size=serving.vocab_size) for name in names])

    @app.get("/health")
    async def health():
        if not async_engine.is_running:
            return JSONResponse(error_body(503, "engine is not running"), status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/version")
    async def version():
        return {"version": podserve.__version__}

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest):
        serving.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise OpenAIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            if not body.messages:
                raise OpenAIError(400, "messages is empty", param="messages")
            ids = serving.chat_prompt_ids(body.messages)
        else:
            ids = serving.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
        return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=serving.max_model_len)

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest):
        serving.check_model(body.model)
        serving.check_token_ids(body.tokens, "tokens")
        return DetokenizeResponse(prompt=serving.tokenizer.decode(body.tokens))

    return app


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the caught SIGINT/SIGTERM after shutdown, so a graceful stop exits 0."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def run_server(args) -> int:
    """``podserve serve``: build the engine, serve until SIGINT/SIGTERM, return 0 after a clean stop.

    On a signal uvicorn stops accepting connections, lets in-flight requests finish for up to
    ``--shutdown-timeout`` seconds, then cancels the rest (their streams abort their requests);
    the lifespan's exit stops the engine thread.
    """
    from podserve.engine.engine import Engine
    from podserve.entrypoints.engine_args import engine_config_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(engine_config_from_args(args))
    async_engine = AsyncEngine(engine, max_queue_len=args.max_queue_len)
    names = [args.served_model_name] if args.served_model_name else None
    app = build_app(async_engine, names, api_key=args.api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=False)
    server = _Server(config)
    logger.info("serving %s on http://%s:%d (max_model_len=%d)", (names or [engine.model_name])[0],
                args.host, args.port, engine.max_model_len)
    server.run()
    return 0 if server.started else 1
