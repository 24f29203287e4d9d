"""/v1/chat/completions: a typed request -> agents (one per choice) -> a response or SSE chunks.

The shapes are OpenAI's. What a MOSS plugin turn adds travels in the `moss`
extension field, which plain clients ignore:
- a streamed plugin step is a chunk whose delta has `moss: {"thoughts" | "commands" |
  "results" | "citation": text}`; inner thoughts also come as `delta.reasoning_content`;
- a non-streamed message has `moss: {thoughts, commands, results, citations}`.
Client tools come back as `tool_calls` (see openai_tools).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from dataclasses import replace
from typing import Any

from .. import protocol
from ..agent import Agent
from ..engine.generate import ContextTooLong
from ..plugins.registry import Plugin
from .errors import APIError, bad_request
from .openai_tools import BridgeError, client_plugins, conversation, tool_calls
from .schemas import ChatCompletionRequest


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ThoughtsStream:
    """Turns the first pass's raw deltas into reasoning deltas: the thoughts only, never the tags."""

    def __init__(self) -> None:
        self.raw, self.sent = "", 0

    def feed(self, delta: str) -> str:
        self.raw += delta
        visible = protocol.visible_thoughts(self.raw)
        out, self.sent = visible[self.sent:], max(self.sent, len(visible))
        return out


def prepare(server, req: ChatCompletionRequest) -> list[tuple[Agent, protocol.Conversation, dict[str, Plugin]]]:
    """One (agent, conversation, plugins) per choice; raises APIError for what the request gets wrong."""
    body = req.model_dump(exclude_unset=True, by_alias=True)
    body["messages"] = [m.model_dump(exclude_unset=True) for m in req.messages]
    params = server.sampling(req, req.max_completion_tokens or req.max_tokens)
    if req.logprobs:
        params = _with(params, logprobs=req.top_logprobs or 0)
    tool_choice = req.tool_choice
    if req.response_format is not None and req.response_format.type != "text":
        schema = req.response_format.json_schema.schema_ if req.response_format.json_schema else None
        params = _with(params, constraint=server.json_constraint(schema))
        tool_choice = "none"  # the grammar shapes the reply; a plugin pass would be forced into JSON too
    out = []
    for i in range(req.n):
        seeded = params if params.seed is None else replace(params, seed=params.seed + i)
        agent, plugins = _agent(server, body, seeded, tool_choice)
        try:
            if agent.speaks_moss:
                conv = conversation(body["messages"], agent.meta(), plugins)
            else:
                conv = protocol.from_openai({"messages": body["messages"]}, default_meta="", escape_user=True)
                if not conv.turns or conv.turns[-1].reply is not None:
                    raise bad_request("the last message must be a user message", "messages")
        except BridgeError as e:
            raise bad_request(str(e), e.param) from None
        except protocol.ProtocolError as e:
            raise bad_request(str(e), "messages") from None
        try:
            agent.fit_context(conv)  # checked now, so a stream never starts for a prompt that cannot fit
        except ContextTooLong as e:
            raise APIError(413, str(e), "messages", "context_length_exceeded") from None
        out.append((agent, copy.deepcopy(conv), plugins))
    return out


def _with(params, **changes):
    try:
        return replace(params, **changes)
    except TypeError as e:  # an engine without that feature
        raise APIError(400, f"this server's engine does not support {', '.join(changes)}: {e}",
                       next(iter(changes))) from None


def _agent(server, body: dict, params, tool_choice: Any) -> tuple[Agent, dict[str, Plugin]]:
    base = server.base
    try:
        client = client_plugins(body.get("tools"))
    except BridgeError as e:
        raise bad_request(str(e), e.param) from None
    if client and not base.speaks_moss:
        raise bad_request("this model does not speak the MOSS plugin protocol, so it cannot call tools; "
                          "serve a MOSS-protocol model (e.g. one built by `moss speedrun`)", "tools")
    plugins = {} if tool_choice == "none" else {**base.plugins, **client}  # the client's tools win
    forced = _forced_tool(tool_choice, plugins)
    agent = Agent(base.generator, speaks_moss=base.speaks_moss, preset=base.preset, plugins=plugins,
                  available=dict(plugins), params=params, template=base.template, forced_tool=forced)
    messages = body["messages"]
    if messages[0].get("role") in ("system", "developer") and isinstance(messages[0].get("content"), str):
        system = messages[0]["content"]
        if agent.speaks_moss and plugins:  # the client's instruction, then our capability lines
            builtin = [n for n in plugins if n in protocol.PLUGINS]
            custom = [p.capability for n, p in plugins.items() if n not in protocol.PLUGINS]
            system = system.rstrip("\n") + "\n" + protocol.capability_lines(builtin, custom=custom)
        agent.set_system(system)
    return agent, plugins


def _forced_tool(choice: Any, plugins: dict[str, Plugin]) -> str | None:
    """`required` or a named function: the first pass is made to start a command for that tool."""
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        if not plugins:
            raise bad_request("tool_choice 'required' needs tools (or server plugins) to call", "tool_choice")
        return next(iter(plugins)) if len(plugins) == 1 else ""
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str) or name not in plugins:
        raise bad_request(f"tool_choice names {name!r}, which is not among the tools: {', '.join(plugins) or 'none'}",
                          "tool_choice")
    return name


# ---------------------------------------------------------------- response bodies

def message_of(agent: Agent, turn: protocol.Turn, events: list, plugins: dict, n_turn: int) -> tuple[dict, str]:
    if any(e.kind == "tool_calls" for e in events):
        return ({"role": "assistant", "content": None, "reasoning_content": turn.thoughts,
                 "tool_calls": tool_calls(turn, plugins, n_turn),
                 "moss": {"thoughts": turn.thoughts, "commands": turn.commands}}, "tool_calls")
    message: dict[str, Any] = {"role": "assistant", "content": turn.reply}
    if turn.plugin:
        message["reasoning_content"] = turn.thoughts
        message["moss"] = {**protocol.moss_fields(turn), "citations": [e.text for e in events if e.kind == "citation"]}
    return message, agent.last_finish_reason


def logprobs_content(tokenizer, entries: list, reply: str | None = None) -> dict | None:
    """OpenAI's chat `logprobs.content` list from the engine's TokenLogprob entries.

    With `reply`, only the tokens that make up the reply are kept: not the stop
    string (`<eom>`) that ended it, which the reply does not include either.
    """
    if not entries:
        return None
    if reply is not None:
        kept, text = [], ""
        for e in entries:
            if len(text.lstrip()) >= len(reply):
                break
            kept.append(e)
            text += tokenizer.decode([e.token_id], skip_special_tokens=False)
        entries = kept

    def item(token_id: int, lp: float) -> dict:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries]}


def usage_of(agents: list[Agent]) -> dict:
    prompt = agents[0].last_prompt_tokens
    completion = sum(a.last_completion_tokens for a in agents)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chunk(cid: str, created: int, model: str, choices: list[dict], **extra) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def delta_for(event, thoughts: ThoughtsStream) -> dict | None:
    """The chunk delta for one agent event (None: nothing to send for it)."""
    if event.kind == "text":
        return {"content": event.text}
    if event.kind == "thoughts":
        text = thoughts.feed(event.text)
        return {"reasoning_content": text, "moss": {"thoughts": text}} if text else None
    if event.kind in ("commands", "results", "citation"):
        return {"moss": {{"citation": "citation"}.get(event.kind, event.kind): event.text}}
    return None


def blocked_response(model: str, n: int = 1) -> dict:
    """The answer to a request moderation blocked: no generation, finish_reason content_filter."""
    from .moderation import block_message

    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": block_message("en")},
                         "logprobs": None, "finish_reason": "content_filter"} for i in range(n)],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


async def blocked_chunks(model: str, n: int = 1):
    from .moderation import block_message

    cid, created = new_id("chatcmpl"), now()
    for i in range(n):
        yield chunk(cid, created, model, [{"index": i, "delta": {"role": "assistant", "content": block_message("en")},
                                           "logprobs": None, "finish_reason": None}])
        yield chunk(cid, created, model, [{"index": i, "delta": {}, "logprobs": None, "finish_reason": "content_filter"}])
    yield "data: [DONE]\n\n"


def now() -> int:
    return int(time.time())
