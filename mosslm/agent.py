"""The conversation loop on top of a text generator and the plugins.

For models that speak the MOSS protocol, a plugin turn takes two passes:
generate to `<eoc>`, run the commands, append the Results block and
`<|MOSS|>:`, generate to `<eom>`. Models with a foreign chat template (e.g. a
Llama/Qwen/SmolLM folder or GGUF) get plain turns through their own template.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from . import protocol
from .engine import Generation, SamplingParams
from .engine.engine import Engine, EngineConfig, RequestTooLarge
from .engine.generate import ContextTooLong
from .model import LoadedModel
from .plugins.registry import BUILTINS, Plugin, run_commands_with_sources
from .protocol import Conversation, Turn


class TextGenerator(Protocol):
    """What the agent needs from a model: count tokens, stream a continuation."""

    context_length: int

    def count_tokens(self, text: str) -> int: ...

    def stream(self, prompt: str, params: SamplingParams, result: Generation) -> Iterator[str]: ...


class ModelGenerator:
    """A loaded checkpoint behind the TextGenerator interface, generating on the batching engine.

    Several agents (the server's requests, the eval) may share one generator:
    their generations run concurrently in the engine's batches.
    """

    def __init__(self, loaded: LoadedModel, engine_config: EngineConfig | None = None, engine_factory=None) -> None:
        """`engine_factory(stop_token_ids)` builds another engine with Engine's interface (the vLLM backend);
        then `loaded.model` may be None and `loaded.generation_config` says the end-of-text ids."""
        self.loaded = loaded
        tok = loaded.tokenizer
        ids = set()
        gen_config = loaded.generation_config if loaded.model is None else loaded.model.generation_config
        gen_eos = getattr(gen_config, "eos_token_id", None)
        for value in (gen_eos, tok.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        if loaded.speaks_moss:
            # Terminators stop only the pass that ends with them (see the agent);
            # the end-of-text token always stops.
            ids = {i for i in ids if tok.convert_ids_to_tokens(i) not in protocol.TERMINATORS}
        self.stop_token_ids = sorted(ids)
        self.engine = (engine_factory(self.stop_token_ids) if engine_factory is not None else
                       Engine(loaded.model, tok, engine_config, stop_token_ids=self.stop_token_ids))
        self.context_length = min(loaded.context_length, self.engine.max_seq_len)

    def encode(self, text: str) -> list[int]:
        return self.loaded.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def stream(self, prompt: str, params: SamplingParams, result: Generation) -> Iterator[str]:
        try:
            handle = self.engine.submit(self.encode(prompt), params)
        except RequestTooLarge as e:
            raise ContextTooLong(str(e)) from None
        try:
            yield from handle
        finally:
            if not handle.finished.is_set():  # the reader stopped early: free the slot
                handle.cancel()
        for name in ("text", "token_ids", "finish_reason", "stopped_on", "prompt_tokens", "logprobs"):
            if hasattr(handle.result, name):
                setattr(result, name, getattr(handle.result, name))


@dataclass
class Event:
    kind: str      # "text" (reply delta), "thoughts", "commands", "results", "citation",
                   # "tool_calls" (a client-side tool was called: the turn waits for its results), "protocol"
    text: str


@dataclass
class Agent:
    generator: TextGenerator
    speaks_moss: bool = True
    preset: str = "mosslm"
    plugins: dict[str, Plugin] = field(default_factory=dict)      # enabled
    available: dict[str, Plugin] = field(default_factory=lambda: dict(BUILTINS))
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None           # a custom meta instruction / system prompt
    template: Callable[[list[dict], bool], str] | None = None  # foreign chat template renderer
    history: Conversation | None = None
    last_finish_reason: str = "stop"
    forced_tool: str | None = None      # OpenAI tool_choice: a tool name, "" for any tool, None for the model's choice
    # Usage of the last `complete()`: the first pass's prompt, the tokens of every pass, the reply's logprobs.
    last_prompt_tokens: int = 0
    last_completion_tokens: int = 0
    last_logprobs: list = field(default_factory=list)
    last_sources: list = field(default_factory=list)     # (title, url) behind citation n of the last plugin turn
    last_tools_started: float = 0.0                      # wall clock (time.time) when its commands ran
    last_tools_seconds: float = 0.0                      # how long they took together (they run concurrently)

    def __post_init__(self) -> None:
        self.clear()

    # ------------------------------------------------------------ state

    def meta(self) -> str:
        if self.system is not None:
            return self.system
        builtin = [n for n in self.plugins if n in protocol.PLUGINS]
        custom = [p.capability for n, p in self.plugins.items() if n not in protocol.PLUGINS]
        return protocol.meta_instruction(self.preset, plugins=builtin, custom=custom)

    def clear(self) -> None:
        self.history = Conversation(self.meta())

    def set_plugins(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.available]
        if unknown:
            raise ValueError(f"unknown plugin(s) {unknown}; available: {', '.join(self.available)}")
        self.plugins = {n: self.available[n] for n in names}
        self.history.meta = self.meta()

    def set_system(self, text: str | None) -> None:
        self.system = text
        self.history.meta = self.meta()

    @property
    def plugin_mode(self) -> bool:
        return self.speaks_moss and bool(self.plugins)

    # ------------------------------------------------------------ prompts

    def _prompt(self, conv: Conversation) -> str:
        if self.speaks_moss:
            return protocol.generation_prompt(conv, plugin_mode=self.plugin_mode)
        return self.template(self._messages(conv), True)

    def _messages(self, conv: Conversation) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for t in conv.turns:
            messages.append({"role": "user", "content": t.human})
            if t.reply is not None:
                messages.append({"role": "assistant", "content": t.reply})
        return messages

    def fit_context(self, conv: Conversation) -> Conversation:
        """Drop the oldest whole turns until prompt + reply room fits the context."""
        reserve = min(self.params.max_new_tokens, self.generator.context_length // 4)
        budget = self.generator.context_length - reserve
        conv = protocol.compress_history(conv) if self.speaks_moss else conv
        while True:
            used = self.generator.count_tokens(self._prompt(conv))
            if used <= budget:
                return conv
            if len(conv.turns) <= 1:
                raise ContextTooLong(
                    f"the message is too long: the prompt needs {used} tokens but only {budget} of the "
                    f"model's {self.generator.context_length}-token context are available "
                    f"({reserve} are kept for the reply); shorten the message or lower max_new_tokens")
            conv = Conversation(conv.meta, conv.turns[1:], conv.id, conv.extra)

    # ------------------------------------------------------------ one turn

    def send(self, user_text: str) -> Iterator[Event]:
        """Answer one user message, streaming events; the history keeps the turn."""
        turn = Turn(human=protocol.escape(user_text))
        conv = copy.deepcopy(self.history)
        conv.turns.append(turn)
        yield from self.complete(conv)
        first = not self.history.turns
        self.history.turns.append(turn)
        # The first turn's protocol text starts with the meta instruction the model was given.
        yield Event("protocol", self.turn_text(turn, conv.meta if first else ""))

    def turn_text(self, turn: Turn, meta: str = "") -> str:
        """The exact text of one turn as the model reads it (MOSS protocol, or its own template)."""
        if self.speaks_moss:
            return meta + turn.render()
        return self.template(self._messages(Conversation("", [turn])), False)

    def complete(self, conv: Conversation) -> Iterator[Event]:
        """Finish the last turn of `conv` in place (its reply is None).

        A fresh turn runs both passes. A turn whose commands already have
        results (the client ran its tools: the OpenAI tools bridge) gets the
        second pass only. When the first pass calls a client-side tool, the
        turn stops after it with a "tool_calls" event and no reply.
        """
        turn = conv.turns[-1]
        conv = self.fit_context(conv)
        self.last_prompt_tokens, self.last_completion_tokens, self.last_logprobs = 0, 0, []
        self.last_sources, self.last_tools_seconds = [], 0.0
        if self.plugin_mode and turn.commands is not None:
            yield from self._second_pass(conv, turn, [])
        elif self.plugin_mode:
            yield from self._plugin_turn(conv, self._prompt(conv), turn)
        else:
            stops = protocol.reply_stop() if self.speaks_moss else []
            turn.reply = yield from self._generate(self._prompt(conv), stops, "text")
            turn.reply = turn.reply.strip() if self.speaks_moss else turn.reply

    def _generate(self, prompt: str, stops: list[str], kind: str) -> Iterator[Event]:
        result = Generation()
        params = replace(self.params, stop=list(self.params.stop) + stops)
        started = not self.speaks_moss  # MOSS text has a space after the role tag: not part of the reply
        for delta in self.generator.stream(prompt, params, result):
            if not started:
                delta = delta.lstrip()
                started = bool(delta)
            if delta:
                yield Event(kind, delta)
        self.last_finish_reason = result.finish_reason
        self.last_prompt_tokens = self.last_prompt_tokens or result.prompt_tokens
        self.last_completion_tokens += len(result.token_ids)
        if kind == "text":
            self.last_logprobs = list(getattr(result, "logprobs", None) or [])
        return result.text

    def _plugin_turn(self, conv: Conversation, prompt: str, turn: Turn) -> Iterator[Event]:
        if self.forced_tool is not None:  # the prompt opens the command; the model completes it
            forced = protocol.forced_first_pass(self.forced_tool)
            first = forced + (yield from self._generate(prompt + forced, protocol.plugin_first_pass_stop(), "forced"))
        else:
            first = yield from self._generate(prompt, protocol.plugin_first_pass_stop(), "thoughts")
        turn.plugin = True
        turn.thoughts, turn.commands = protocol.parse_first_pass(first)
        if turn.commands is not None:
            yield Event("commands", turn.commands)
        commands = turn.parsed_commands()
        if any(c.name in self.plugins and self.plugins[c.name].client_side for c in commands):
            yield Event("tool_calls", turn.commands)  # the client runs these and comes back with results
            return
        self.last_tools_started, started = time.time(), time.monotonic()
        turn.results, sources = run_commands_with_sources(commands, self.plugins)
        self.last_tools_seconds, self.last_sources = time.monotonic() - started, sources
        if turn.results is not None:
            yield Event("results", turn.results)
        yield from self._second_pass(conv, turn, sources)

    def _second_pass(self, conv: Conversation, turn: Turn, sources: list[tuple[str, str]]) -> Iterator[Event]:
        """The model reads the tool results and writes the reply."""
        reply = yield from self._generate(protocol.second_pass_prompt(conv.meta, conv.turns[:-1] + [turn]),
                                          protocol.reply_stop(), "text")
        turn.reply = reply.strip()
        cited = protocol.citations(turn.reply)
        for n in cited:
            if 1 <= n <= len(sources):
                title, url = sources[n - 1]
                yield Event("citation", f"[{n}] {title} {url}".rstrip())
