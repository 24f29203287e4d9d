"""`moss serve`: an OpenAI-compatible HTTP API over the agent.

POST /v1/chat/completions (with `tools`: the OpenAI tools bridge, see
openai_tools), GET /v1/models, GET /health. Server-side plugins (`--plugins`)
are run by the server; the client's tools come back as `tool_calls`.

Concurrent requests run together in the engine's continuous batches; when
its queue is full a request gets HTTP 503 at once instead of waiting.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import protocol
from ..agent import Agent
from ..engine import SamplingParams
from ..engine.engine import EngineFull
from ..engine.generate import ContextTooLong
from ..plugins.registry import Plugin
from .openai_tools import BridgeError, client_plugins, conversation, tool_calls


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


@dataclass
class Server:
    base: Agent                                  # model, protocol and the server's plugins
    model_name: str

    # ------------------------------------------------------------ request -> agent

    def params(self, body: dict) -> SamplingParams:
        d = self.base.params
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        try:
            return SamplingParams(
                max_new_tokens=d.max_new_tokens if max_tokens is None else max_tokens,
                temperature=float(body.get("temperature", d.temperature)),
                top_p=float(body.get("top_p", d.top_p)), top_k=d.top_k,
                repetition_penalty=d.repetition_penalty,
                seed=body.get("seed"), stop=list(stop) if isinstance(stop, list) else stop)
        except (TypeError, ValueError) as e:
            raise RequestError(f"invalid sampling parameters: {e}") from None

    def agent(self, body: dict) -> tuple[Agent, dict[str, Plugin]]:
        choice = body.get("tool_choice", "auto")
        if choice not in ("auto", "none", None):
            raise RequestError("tool_choice supports 'auto' and 'none' (a MOSS model decides itself which "
                               "tool to call)", "tool_choice")
        try:
            client = client_plugins(body.get("tools"))
        except BridgeError as e:
            raise RequestError(str(e), e.param) from None
        if client and not self.base.speaks_moss:
            raise RequestError("this model does not speak the MOSS plugin protocol, so it cannot call tools; "
                               "serve a MOSS-protocol model (e.g. one built by `moss speedrun`)", "tools")
        plugins = {} if choice == "none" else {**self.base.plugins, **client}  # the client's tools win
        agent = Agent(self.base.generator, speaks_moss=self.base.speaks_moss, preset=self.base.preset,
                      plugins=plugins, available=dict(plugins), params=self.params(body),
                      template=self.base.template)
        messages = body.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) \
                and messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
            system = messages[0]["content"]
            if agent.speaks_moss and plugins:  # the client's instruction, then our capability lines
                builtin = [n for n in plugins if n in protocol.PLUGINS]
                custom = [p.capability for n, p in plugins.items() if n not in protocol.PLUGINS]
                system = system.rstrip("\n") + "\n" + protocol.capability_lines(builtin, custom=custom)
            agent.set_system(system)
        return agent, plugins

    # ------------------------------------------------------------ one completion

    def chat_completion(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        if body.get("stream"):
            raise RequestError("streaming is not available yet; send stream=false", "stream")
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported", "n")
        agent, plugins = self.agent(body)
        try:
            if agent.speaks_moss:
                conv = conversation(body.get("messages"), agent.meta(), plugins)
            else:
                conv = protocol.from_openai({"messages": body.get("messages")}, default_meta="", escape_user=True)
                if not conv.turns or conv.turns[-1].reply is not None:
                    raise RequestError("the last message must be a user message", "messages")
        except BridgeError as e:
            raise RequestError(str(e), e.param) from None
        except protocol.ProtocolError as e:
            raise RequestError(str(e), "messages") from None
        turn = conv.turns[-1]
        try:
            events = list(agent.complete(conv))
        except ContextTooLong as e:
            raise RequestError(str(e), "messages", "context_length_exceeded") from None
        except EngineFull as e:
            raise RequestError(str(e), None, "server_busy", status=503) from None
        n_turn = len(conv.turns)
        usage = {"prompt_tokens": agent.generator.count_tokens(conv.meta + "".join(t.human for t in conv.turns)),
                 "completion_tokens": agent.generator.count_tokens((turn.thoughts or "") + (turn.commands or "")
                                                                   + (turn.reply or ""))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if any(e.kind == "tool_calls" for e in events):
            message = {"role": "assistant", "content": None, "reasoning_content": turn.thoughts,
                       "tool_calls": tool_calls(turn, plugins, n_turn),
                       "moss": {"thoughts": turn.thoughts, "commands": turn.commands}}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": turn.reply}
            if turn.plugin:
                message["moss"] = {**protocol.moss_fields(turn),
                                   "citations": [e.text for e in events if e.kind == "citation"]}
            finish = agent.last_finish_reason
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="mosslm", version="0.1")

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": server.model_name}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "owned_by": "mosslm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError as e:
            return error(400, f"the request body is not valid JSON: {e}")
        try:
            return await run_in_threadpool(server.chat_completion, body)
        except RequestError as e:
            return error(e.status, str(e), e.param, e.code)

    return app


def serve(server: Server, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
