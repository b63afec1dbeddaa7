"""The FastAPI app (OpenAI-compatible endpoints) and its uvicorn runner with graceful shutdown."""
from __future__ import annotations

import contextlib
import inspect
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
from podserve.engine.client import EngineClient
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

# Paths that need the API key when one is set (as in vLLM: the OpenAI API, not ops endpoints;
# /admin changes the deployment, so it is protected too).
_PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize", "/admin/")


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


def _is_cluster(engine_client) -> bool:
    """Replicas behind a router (``podserve.cluster.router.Router``) rather than one local engine."""
    return hasattr(engine_client, "health_report")


def build_app(engine_client: EngineClient, served_model_names: list[str] | None = None, api_key: str | None = None) -> FastAPI:
    """An app serving ``engine_client`` (an ``AsyncEngine``, or a ``Router`` over replicas);
    its lifespan starts and stops it."""
    names = served_model_names or [engine_client.model_name]
    serving = OpenAIServing(engine_client, names)
    cluster = _is_cluster(engine_client)
    if cluster:
        metrics = engine_client.build_metrics(names[0])
    else:
        metrics = ServerMetrics(engine_client, names[0])
        engine_client.output_listeners.append(metrics.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_client.start()
        try:
            yield
        finally:
            engine_client.shutdown()  # after uvicorn drained connections: aborts leftovers

    app = FastAPI(title="podserve", version=podserve.__version__, lifespan=lifespan)
    app.state.engine_client = engine_client
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
        if cluster:  # per-replica status; 200 while at least one replica serves
            ok, report = engine_client.health_report()
            return JSONResponse(report, status_code=200 if ok else 503)
        if not engine_client.is_running:
            return JSONResponse(error_body(503, "engine is not running"), status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus():
        body = metrics.render()
        if inspect.isawaitable(body):  # a cluster scrapes its replicas
            body = await body
        return Response(body, media_type=CONTENT_TYPE)

    if cluster:
        @app.post("/admin/replicas/{replica_id}/restart", status_code=202)
        async def restart_replica(replica_id: int):
            """Replace a replica's actor (dead, hung or healthy); poll /health for it to come back."""
            if not 0 <= replica_id < len(engine_client.replicas):
                raise OpenAIError(404, f"no replica {replica_id}: there are {len(engine_client.replicas)}",
                                  param="replica_id")
            replica = await engine_client.restart(replica_id)
            return replica.describe()

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
    the lifespan's exit stops the engine thread (or kills the replicas).

    With ``--replicas N`` or ``--ray-address`` the engines run as Ray actors behind a router
    (``podserve.cluster``); without those flags nothing of Ray is imported.
    """
    from podserve.entrypoints.engine_args import engine_config_from_args

    cluster = getattr(args, "replicas", None) is not None or getattr(args, "ray_address", None)
    if cluster:
        from podserve.cluster import require_ray

        require_ray("--ray-address" if args.replicas is None else "--replicas")  # before any logging or loading
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cluster:
        from podserve.cluster.launch import start_router

        engine_client = start_router(args, engine_config_from_args(args))
    else:
        from podserve.engine.engine import Engine

        config = engine_config_from_args(args)
        if getattr(args, "engine_process", False):
            from podserve.engine.process_client import EngineProcessClient

            engine_client = EngineProcessClient(config, max_queue_len=args.max_queue_len)
        else:
            engine = Engine(config)
            engine.freeze_heap()  # serves until the process exits
            engine_client = AsyncEngine(engine, max_queue_len=args.max_queue_len)
    names = [args.served_model_name] if args.served_model_name else None
    app = build_app(engine_client, names, api_key=args.api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=False)
    server = _Server(config)
    logger.info("serving %s on http://%s:%d (max_model_len=%d%s)", (names or [engine_client.model_name])[0],
                args.host, args.port, engine_client.max_model_len,
                f", {len(engine_client.replicas)} replicas, routing {args.routing}" if cluster else "")
    try:
        server.run()
    finally:
        if (cluster or getattr(args, "engine_process", False)) and not server.started:  # the lifespan never ran: stop the replicas here
            engine_client.shutdown()
    return 0 if server.started else 1
