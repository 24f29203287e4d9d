"""The OpenAI tools bridge: an API client's `tools` become MOSS plugins.

- Each function tool is shown to the model as a capability line,
  `- {description}: enabled. API: {name}({argument})`.
- The model's commands for client tools come back as `tool_calls` (nothing is
  run on the server); commands for the server's own plugins in the same pass
  are run by the server, when the client comes back.
- The client's `role: "tool"` messages become the Results block of the turn's
  second pass.

MOSS commands carry one string argument. A tool with one parameter gets it as
that parameter; a tool with several gets the argument parsed as a JSON object
when it is one, else as its first (required) parameter.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .. import protocol
from ..plugins.registry import Plugin, run_commands_with_sources
from ..protocol import Command, Conversation, Turn

_NAME_RE = re.compile(r"\w{1,64}")


class BridgeError(ValueError):
    """A request the bridge cannot take (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _client_side(arg: str) -> str | None:
    raise RuntimeError("client-side tools are run by the API client")


def _label(name: str, description: str) -> str:
    """A one-line capability label: the description's first sentence, kept short."""
    first = re.split(r"(?<=[.。!?！？])\s|\n|[:：]", description.strip(), maxsplit=1)[0].rstrip(".。")
    first = protocol.escape(" ".join(first.split()))
    return first if 0 < len(first) <= 80 and ":" not in first else name


def client_plugins(tools: Any) -> dict[str, Plugin]:
    """OpenAI `tools` -> client-side plugins, validated."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise BridgeError("'tools' must be a list", "tools")
    plugins: dict[str, Plugin] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BridgeError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}", f"tools[{i}]")
        name = fn["name"]
        if not _NAME_RE.fullmatch(name):
            raise BridgeError(f"tools[{i}]: a tool name must be 1-64 letters, digits or '_' (MOSS command "
                              f"grammar), got {name!r}", f"tools[{i}].function.name")
        params = fn.get("parameters") or {}
        props = params.get("properties") if isinstance(params, dict) else None
        props = props if isinstance(props, dict) else {}
        required = [r for r in (params.get("required") or []) if r in props] if isinstance(params, dict) else []
        arg_name = (required or list(props) or ["input"])[0]
        if not _NAME_RE.fullmatch(arg_name):
            arg_name = "input"
        description = str(fn.get("description") or "")
        plugins[name] = Plugin(name, _client_side, _label(name, description), arg_name, description, 0.0,
                               client_side=True, schema=params if isinstance(params, dict) else None)
    return plugins


def arguments(plugin: Plugin, arg: str) -> str:
    """The JSON `arguments` of a tool call for a MOSS command argument."""
    props = (plugin.schema or {}).get("properties")
    if isinstance(props, dict) and len(props) > 1:
        try:
            value = json.loads(arg)
            if isinstance(value, dict):
                return json.dumps(value, ensure_ascii=False)
        except json.JSONDecodeError:
            pass
    return json.dumps({plugin.arg_name: arg}, ensure_ascii=False)


def tool_calls(turn: Turn, plugins: dict[str, Plugin], turn_no: int) -> list[dict]:
    """The turn's commands for client tools, as OpenAI tool calls."""
    calls = []
    for i, c in enumerate(turn.parsed_commands()):
        plugin = plugins.get(c.name)
        if plugin is not None and plugin.client_side:
            calls.append({"id": f"call_{turn_no}_{i}", "type": "function",
                          "function": {"name": c.name, "arguments": arguments(plugin, c.arg)}})
    return calls


def _command(call: Any, plugins: dict[str, Plugin], where: str) -> Command:
    try:
        fn = call["function"]
        name, raw = fn["name"], fn.get("arguments") or "{}"
        args = json.loads(raw) if isinstance(raw, str) else raw
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise BridgeError(f"{where}: malformed tool call ({e})") from None
    plugin = plugins.get(name)
    if isinstance(args, dict) and plugin is not None and plugin.arg_name in args and len(args) == 1:
        return Command(name, str(args[plugin.arg_name]))
    if isinstance(args, dict) and len(args) == 1:
        return Command(name, str(next(iter(args.values()))))
    return Command(name, json.dumps(args, ensure_ascii=False))


def conversation(messages: Any, meta: str, plugins: dict[str, Plugin]) -> Conversation:
    """Messages -> a Conversation whose last turn is pending.

    The last turn is either a fresh user message, or a user message followed by
    the assistant's tool calls and the client's tool messages: then its Results
    block is built here (server-side calls without a tool message are run now).
    """
    if not isinstance(messages, list) or not messages:
        raise BridgeError("'messages' must be a non-empty list", "messages")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BridgeError("'messages' needs at least one user message", "messages")
    last = users[-1]
    head, tail = messages[: last + 1], messages[last + 1:]
    try:
        conv = protocol.from_openai({"messages": head}, default_meta=meta, escape_user=True)
    except protocol.ProtocolError as e:
        raise BridgeError(str(e), "messages") from None
    conv.meta = meta
    if not tail:
        return conv
    call_msg, tool_msgs = tail[0], tail[1:]
    if not (isinstance(call_msg, dict) and call_msg.get("role") == "assistant" and call_msg.get("tool_calls")) \
            or any(not isinstance(m, dict) or m.get("role") != "tool" for m in tool_msgs):
        raise BridgeError("after the last user message only an assistant message with tool_calls and then "
                          "tool messages may follow", "messages")
    calls = call_msg["tool_calls"]
    if not isinstance(calls, list):
        raise BridgeError("'tool_calls' must be a list", "messages")
    answers: dict[str, str] = {}
    for i, m in enumerate(tool_msgs):
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BridgeError(f"tool message {i}: content must be a string", "messages")
        answers[str(m.get("tool_call_id", f"#{i}"))] = content
    turn = conv.turns[-1]
    extra = call_msg.get("moss") if isinstance(call_msg.get("moss"), dict) else {}
    # The exact first pass, when the client sent back our `moss` field: it keeps server-side commands too.
    commands = protocol.parse_commands(extra["commands"]) if isinstance(extra.get("commands"), str) else \
        [_command(c, plugins, f"tool_calls[{i}]") for i, c in enumerate(calls)]
    ids = {}
    for i, call in enumerate(calls):
        if isinstance(call, dict):
            c = _command(call, plugins, f"tool_calls[{i}]")
            ids[c] = str(call.get("id", f"#{i}"))
    blocks: list[tuple[Command, str]] = []
    server: list[Command] = []
    for c in commands:
        plugin = plugins.get(c.name)
        if plugin is not None and not plugin.client_side:
            server.append(c)
        elif ids.get(c) in answers:
            blocks.append((c, protocol.tool_result_block(c, answers[ids[c]])))
        elif plugin is not None:
            raise BridgeError(f"no tool message answers the tool call {ids.get(c)} ({c})", "messages")
    if server:
        text, _ = run_commands_with_sources(server, {n: p for n, p in plugins.items() if not p.client_side})
        blocks += _split(text, server)
    turn.plugin = True
    turn.thoughts = extra.get("thoughts") if isinstance(extra.get("thoughts"), str) else \
        (call_msg.get("reasoning_content") if isinstance(call_msg.get("reasoning_content"), str) else None)
    turn.commands = protocol.render_commands(commands)
    turn.results = protocol.order_results(blocks)
    return conv


def _split(text: str | None, commands: list[Command]) -> list[tuple[Command, str]]:
    """Server results text -> (command, block) pairs, so they sort with the client's."""
    if not text:
        return []
    starts = [text.find(f"{c} =>") for c in commands]
    pairs = sorted((s, c) for s, c in zip(starts, commands) if s >= 0)
    ends = [s for s, _ in pairs[1:]] + [len(text)]
    return [(c, text[s:e]) for (s, c), e in zip(pairs, ends)]
