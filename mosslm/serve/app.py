"""`moss serve`: the OpenAI-compatible HTTP layer (routes, body limits, error envelopes).

Routes: POST /v1/chat/completions and /v1/completions (streaming or not),
GET /v1/models, /tokenizer_info, POST /tokenize and /detokenize, /health (503 while the model loads), /metrics (Prometheus);
the web chat at / and its API under /api/ (webchat.py).
The request handling below HTTP is in server.py; the chat shapes in chat.py,
completions in completions.py, keys and limits in keys.py.
"""

from __future__ import annotations

import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import APIError
from .schemas import ChatCompletionRequest, CompletionRequest, describe
from .server import Server, ServerConfig  # noqa: F401  (the names tests and the CLI import from here)

log = logging.getLogger("mosslm.serve")


class BodyLimit:
    """ASGI middleware: a body over the limit gets 413 before any of it is parsed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = APIError(413, f"the request body is over this server's limit of {self.limit} bytes",
                           code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooBig()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooBig:
            await too_big.response()(scope, receive, send)


class _TooBig(Exception):
    pass


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="mosslm", version="0.1",
                  description="OpenAI-compatible API of a mosslm model, with the `moss` extension fields")
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)
    metrics = server.metrics

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                            code="invalid_json").response()
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        message = f"{param + ': ' if param else ''}{first.get('msg', 'invalid request body')}{more}"
        return APIError(400, message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return APIError(e.status_code if e.status_code in (404, 405) else 400, str(e.detail)).response()

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(getattr(route, "path", "other"), str(response.status_code)).inc()
        return response

    @app.get("/health")
    def health():
        if server.base is None:
            return JSONResponse({"status": "loading", "model": server.model_name}, 503, headers={"Retry-After": "5"})
        return {"status": "ok", "model": server.model_name}

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    def models(request: Request):
        key = server.admit(request.headers.get("authorization"))
        server.release(key, 0)
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": 0,
                                            "owned_by": "mosslm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        key = server.admit(request.headers.get("authorization"))
        user = key.id if key is not None else 0
        return await _answer(key, body.stream, lambda box: server.chat_stream(body, box, user),
                             lambda box: server.chat(body, box, user))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        key = server.admit(request.headers.get("authorization"))
        return await _answer(key, body.stream, lambda box: server.completion(body, box),
                             lambda box: server.completion(body, box))

    async def _answer(key, stream: bool, start_stream, run):
        """Run one admitted request; the in-flight slot and the key's tokens are settled when it ends."""
        box: dict = {}
        if not stream:
            try:
                return await run(box)
            finally:
                server.release(key, box.get("tokens", 0))
        try:
            chunks = await start_stream(box)
        except BaseException:
            server.release(key, 0)
            raise

        async def body():
            try:
                async for part in chunks:
                    yield part
            finally:
                server.release(key, box.get("tokens", 0))

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    from .tokenizer_api import add_tokenizer_routes
    from .webchat import add_web_chat

    add_tokenizer_routes(app, server)
    add_web_chat(app, server)
    return app


def serve(server: Server, host: str = "127.0.0.1", port: int = 8000, load=None) -> None:
    """Run the server; `load()` (if given) returns the agent, built while /health answers 503."""
    import threading

    import uvicorn

    if load is not None:
        def loader():
            started = time.monotonic()
            server.base = load()
            log.warning("model loaded in %.1f s", time.monotonic() - started)
        threading.Thread(target=loader, name="mosslm-load", daemon=True).start()
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")


__all__ = ["Server", "ServerConfig", "create_app", "serve", "describe", "json"]
