"""POST /api/chat: one streamed web chat reply, stored as it grows.

Order of work: validate -> moderation of the input (a blocked input never reaches
the model) -> does the prompt fit -> admission (rate limits, capacity) -> store the
user message -> stream the reply, saving it every SAVE_EVERY_S, checking the output
at sentence boundaries -> store how it ended: complete, stopped (the Stop button),
blocked, error, or incomplete (the client went away; a server that died leaves
'streaming', which the next start turns into incomplete).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone

from fastapi import Request
from fastapi.responses import StreamingResponse

from .. import protocol
from ..agent import Agent
from ..engine.generate import ContextTooLong
from ..protocol import Conversation, ProtocolError, Turn
from . import conversations as store_api
from .chat import ThoughtsStream
from .conversations import NotFound, ReplyState, new_id
from .errors import APIError, bad_request
from .keys import format_time
from .render import StreamRenderer, reply_html
from .runs import Run, client_error, run_all
from .webchat import ChatBody, HistoryTurn, User, settings_of

SAVE_EVERY_S = 1.0


class Generations:
    """The replies streaming now, so that Stop can reach them: message id -> (user, event)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[str, tuple[int, threading.Event]] = {}

    def add(self, mid: str, user: int) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._live[mid] = (user, event)
        return event

    def stop(self, mid: str, user: int) -> bool:
        with self._lock:
            entry = self._live.get(mid)
        if entry is None or entry[0] != user:
            return False
        entry[1].set()
        return True

    def remove(self, mid: str) -> None:
        with self._lock:
            self._live.pop(mid, None)


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _turn_from_row(user_text: str, row) -> Turn:
    return Turn(human=protocol.escape(user_text), reply=row["content"], plugin=bool(row["plugin"]),
                thoughts=row["thoughts"], commands=row["commands"], results=row["results"])


def stored_history(rows) -> list[Turn]:
    """Turns from a stored path [user, reply, user, reply, ...]; blocked and failed replies are left out."""
    turns = []
    for u, a in zip(rows[0::2], rows[1::2]):
        if u["role"] == "user" and a["role"] == "assistant" and a["status"] not in ("blocked", "error", "streaming"):
            turns.append(_turn_from_row(u["content"], a))
    return turns


def sent_history(history: list[HistoryTurn]) -> list[Turn]:
    """Turns from the browser's own copy (keys with logging off), checked like any conversation."""
    turns = []
    for h in history:
        p = h.assistant.plugin or {}
        fields = {k: p.get(k) if isinstance(p.get(k), str) else None for k in ("thoughts", "commands", "results")}
        turns.append(Turn(human=protocol.escape(h.user), reply=h.assistant.content, plugin=bool(p), **fields))
    try:
        protocol.check_turn_contents(turns)
    except ProtocolError as e:
        raise bad_request(f"history: {e}", "history") from None
    return turns


def make_agent(server, settings: dict) -> Agent:
    base = server.base
    params = replace(base.params, temperature=float(settings["temperature"]), max_new_tokens=int(settings["max_tokens"]))
    plugins = {n: base.plugins[n] for n in settings["plugins"]} if base.speaks_moss else {}
    agent = Agent(base.generator, speaks_moss=base.speaks_moss, preset=base.preset, plugins=plugins,
                  available=dict(base.available), params=params, template=base.template)
    system = settings.get("system_prompt")
    if system:
        if agent.speaks_moss and plugins:  # the user's instruction, then the capability lines
            builtin = [n for n in plugins if n in protocol.PLUGINS]
            custom = [p.capability for n, p in plugins.items() if n not in protocol.PLUGINS]
            system = system.rstrip("\n") + "\n" + protocol.capability_lines(builtin, custom=custom)
        agent.set_system(system)
    return agent


def _calls(agent: Agent, turn: Turn) -> list[dict]:
    """One record per command, with its part of the Results block; the commands ran together,
    so each carries the batch's time."""
    results = turn.results or ""
    commands = turn.parsed_commands()
    starts = [results.find(f"{c} =>") for c in commands]
    out = []
    for i, (c, start) in enumerate(zip(commands, starts)):
        later = [s for s in starts if s > start]
        part = results[start:min(later)] if start >= 0 and later else (results[start:] if start >= 0 else None)
        out.append({"name": c.name, "command": str(c), "result": part.strip() if part else None,
                    "started_at": format_time(datetime.fromtimestamp(agent.last_tools_started, timezone.utc)),
                    "duration_ms": round(agent.last_tools_seconds * 1000, 3)})
    return out


def _plugin_view(state: ReplyState, calls: list[dict]) -> dict | None:
    if not state.plugin or not (state.commands or (state.thoughts or "").strip() not in ("", "None")):
        return None  # a plugin-mode turn that used no tool shows no step
    return {"thoughts": state.thoughts, "commands": state.commands, "results": state.results,
            "calls": [{k: c[k] for k in ("name", "command", "result", "duration_ms")} for c in calls],
            "sources": [{"n": i + 1, "title": t, "url": u} for i, (t, u) in enumerate(state.sources or [])]}


async def chat_stream(server, generations: Generations, user: User, body: ChatBody, request: Request,
                      persist: bool) -> StreamingResponse:
    store = server.store if persist else None
    server.check_loaded()
    settings = settings_of(server, user, body.settings)
    lang = "zh" if request.headers.get("accept-language", "").lower().startswith("zh") else "en"

    # ---- what is asked, and the history it follows
    conversation, parent_id, user_row = None, body.parent_id, None
    if body.regenerate is not None:
        if store is None:
            raise bad_request("regenerate needs stored conversations; send the history and the message instead",
                              "regenerate")
        try:
            user_row = store_api.path_to(store, user.id, body.regenerate)[-1]
        except NotFound as e:
            raise APIError(404, str(e), "regenerate", "not_found") from None
        if user_row["role"] != "user":
            raise bad_request("regenerate names a user message, the one whose reply is made again", "regenerate")
        content, parent_id = user_row["content"], user_row["parent_id"]
        conversation = store_api.get_conversation(store, user.id, user_row["conversation_id"])
    else:
        content = body.content or ""
        if not content.strip():
            raise bad_request("the message is empty", "content")
    try:
        if store is not None:
            if conversation is None and body.conversation_id is not None:
                conversation = store_api.get_conversation(store, user.id, body.conversation_id)
            rows = store_api.path_to(store, user.id, parent_id) if parent_id else []
            if rows and conversation is not None and rows[0]["conversation_id"] != conversation["id"]:
                raise NotFound(f"no message {parent_id!r} in this conversation")
            history = stored_history(rows)
        else:
            history = sent_history(body.history or [])
    except NotFound as e:
        raise APIError(404, str(e), code="not_found") from None

    agent = make_agent(server, settings)
    turn = Turn(human=protocol.escape(content))
    conv = Conversation(agent.meta(), history + [turn])
    params = {"temperature": agent.params.temperature, "top_p": agent.params.top_p, "top_k": agent.params.top_k,
              "max_tokens": agent.params.max_new_tokens, "repetition_penalty": agent.params.repetition_penalty,
              "plugins": list(agent.plugins), "system_prompt": settings.get("system_prompt"), "meta": conv.meta}

    # ---- moderation of the input: a blocked message never reaches the model
    verdict = server.moderator.check_input(content) if server.moderator is not None else None
    if verdict is None:
        try:
            agent.fit_context(conv)
        except ContextTooLong as e:
            raise APIError(413, str(e), "content", "context_length_exceeded") from None
        key = server.admit_key(user.key)
    else:
        key = None

    # ---- store the question (durable once `start` is sent)
    def new_conversation() -> dict:
        if store is None:
            return {"id": None, "title": store_api.title_from(content), "created_at": None, "updated_at": None}
        return store_api.create_conversation(store, user.id)

    try:
        if conversation is None:
            conversation = new_conversation()
        if store is not None:
            if user_row is None:
                user_message = store_api.add_user_message(store, user.id, conversation["id"], parent_id, content)
            else:
                user_message = store_api.get_message(store, user.id, user_row["id"])
            conversation = store_api.get_conversation(store, user.id, conversation["id"])
            mid = store_api.start_reply(store, user.id, user_message["id"], server.model_name, params)
        else:
            user_message = {"id": new_id("m"), "parent_id": parent_id, "role": "user", "content": content,
                            "html": None, "status": "complete", "plugin": None, "feedback": None, "model": None}
            mid = new_id("m")
    except BaseException:
        if verdict is None:  # admitted: give its slot back
            server.release(key, 0)
        raise
    stop = generations.add(mid, user.id)
    events = _events(server, agent, conv, turn, store, user, conversation, user_message, mid, params, verdict,
                     stop, generations, key, lang)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(server, agent, conv, turn, store, user, conversation, user_message, mid, params, verdict,
                  stop, generations, key, lang):
    from .moderation import block_message

    state, calls, status = ReplyState(), [], "streaming"
    admitted = verdict is None
    gate = server.moderator.output_gate() if server.moderator is not None else None
    thoughts = ThoughtsStream()
    renderer = StreamRenderer()  # re-renders only the unfinished block per delta

    def record(v) -> None:
        """Every block is stored; for a user with logging off, without the text or the ids."""
        kept = store is not None
        server.record_block(v, user.id, conversation["id"] if kept else None, mid if kept else None, keep_text=kept)

    def message() -> dict:
        if store is not None:
            return store_api.get_message(store, user.id, mid)
        return {"id": mid, "parent_id": user_message["id"], "role": "assistant", "content": state.content,
                "html": reply_html(state.content, state.sources), "status": status, "plugin": _plugin_view(state, calls),
                "feedback": None, "model": server.model_name, "created_at": None}

    def save(final: str | None = None) -> None:
        if store is not None:
            store_api.save_reply(store, mid, state, final or "streaming", calls if final else ())

    try:
        yield _sse({"type": "start", "conversation": conversation, "user_message": user_message, "message_id": mid})
        if not admitted:  # blocked input
            record(verdict)
            status = "blocked"
            save(status)
            yield _sse({"type": "blocked", "stage": "input", "code": "moderation_blocked", "message": block_message(lang)})
            yield _sse({"type": "done", "message": message()})
            return
        run = Run(0, lambda: agent.complete(conv))
        deadline = time.monotonic() + server.config.request_timeout_s
        saved_at = time.monotonic()
        stream = run_all([run], deadline, threading.Event())
        try:
            async for _, event in stream:
                if stop.is_set():
                    break
                if event.kind == "thoughts":
                    state.plugin = True
                    text = thoughts.feed(event.text)
                    if text:
                        state.thoughts = (state.thoughts or "") + text
                        yield _sse({"type": "step", "phase": "thoughts", "text": text,
                                    "plugin": _plugin_view(state, calls)})
                elif event.kind in ("commands", "results"):
                    state.plugin = True
                    setattr(state, event.kind, event.text)
                    if event.kind == "results":
                        state.sources = list(agent.last_sources)
                        calls = _calls(agent, replace(turn, commands=state.commands, results=state.results))
                    yield _sse({"type": "step", "phase": event.kind, "text": event.text,
                                "plugin": _plugin_view(state, calls)})
                elif event.kind == "text":
                    state.content += event.text
                    tripped = gate.feed(event.text) if gate is not None else None
                    if tripped is not None:
                        verdict = tripped
                        break
                    yield _sse({"type": "delta", "text": event.text, "html": renderer.render(state.content, state.sources)})
                if time.monotonic() - saved_at >= SAVE_EVERY_S:
                    save()
                    saved_at = time.monotonic()
        finally:
            await stream.aclose()  # stops the run: the engine frees its slot
        if verdict is None and gate is not None:
            verdict = gate.finish()
        error = client_error([run], "content") if run.error is not None else None
        if verdict is not None:
            status, state.content = "blocked", gate.safe_text
            record(verdict)
            yield _sse({"type": "blocked", "stage": "output", "code": "moderation_blocked", "message": block_message(lang)})
        elif error is not None:
            status = "error"
            yield _sse({"type": "error", "error": {**error.body()["error"], "status": error.status,
                                                    "retry_after": error.retry_after}})
        elif stop.is_set() and turn.reply is None:
            status = "stopped"
        else:
            status = "complete"
        _finish_turn(agent, turn, state, status, run)
        save(status)
        yield _sse({"type": "done", "message": message()})
    finally:
        generations.remove(mid)
        if status == "streaming":  # the client went away mid-reply (or the loop was cancelled)
            status = "incomplete"
            try:
                _finish_turn(agent, turn, state, status, None)
                save(status)
            except Exception:  # the next start marks it incomplete anyway
                pass
        if admitted:
            server.release(key, agent.last_prompt_tokens + agent.last_completion_tokens)


def _finish_turn(agent: Agent, turn: Turn, state: ReplyState, status: str, run) -> None:
    """Fill the stored turn's fields and its exact protocol text from what was generated."""
    done = copy.copy(turn)
    if status == "complete" and turn.reply is not None:
        state.content = turn.reply
        state.plugin, state.thoughts, state.commands, state.results = turn.plugin, turn.thoughts, turn.commands, turn.results
    done.plugin, done.thoughts, done.commands, done.results = state.plugin, state.thoughts, state.commands, state.results
    done.reply = state.content.strip()
    state.finish_reason = ("length" if run is not None and run.timed_out else agent.last_finish_reason) \
        if status == "complete" else status
    try:
        state.protocol_text = agent.turn_text(done)
    except Exception:  # a turn cut in an odd place: keep what we have
        state.protocol_text = None
