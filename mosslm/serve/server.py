"""The server's state and request handling, below HTTP: admission, limits, completions.

Admission, in order: the model is loaded (else 503), the key (401/403, see
keys.py), the key's rate limits (429), and the process's cap on requests in
flight (503). Every refusal is fast and carries `Retry-After` where waiting
helps; the engine's own bounded queue refuses with 503 too.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..agent import Agent
from ..engine import SamplingParams
from . import chat as chat_api
from .errors import APIError, bad_request, overloaded
from .metrics import Metrics
from .runs import Run, client_error, run_all
from .schemas import ChatCompletionRequest, CompletionRequest


@dataclass
class ServerConfig:
    max_in_flight: int = 256           # requests answered at once by this process; beyond: 503
    max_body_bytes: int = 4 << 20      # larger bodies: 413
    max_tokens_cap: int = 4096         # max_tokens above it: 400
    request_timeout_s: float = 600.0   # wall time per request; then it ends with finish_reason "length"
    retry_after_s: float = 1.0
    session_days: float = 7.0          # web chat sessions last this long (never past their key's expiry)


@dataclass
class Server:
    base: Agent | None                 # None while the model loads
    model_name: str
    config: ServerConfig = field(default_factory=ServerConfig)
    store: Any = None                  # the serving database (keys); None: no keys, open server
    open_access: bool = True           # set by `moss serve` from --auth and the listen address
    moderator: Any = None              # moderation.Moderator; None: no moderation

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: getattr(getattr(self.base, "generator", None), "engine", None))
        self._lock = threading.Lock()
        self._in_flight = 0
        self._constraints: dict[str, Any] = {}
        from .keys import RateLimiter

        self.limiter = RateLimiter()

    # ------------------------------------------------------------ admission

    def admit(self, authorization: str | None):
        """Raise APIError unless this request may run now; returns the key (None on an open server)."""
        self.check_loaded()  # before the key: a loading server says so to everyone
        key = None
        if not self.open_access:
            from .keys import AuthError, authenticate

            try:
                key = authenticate(self.store, authorization)
            except AuthError as e:
                self.metrics.refusals.labels("auth").inc()
                raise APIError(e.status, e.message, code=e.code) from None
        return self.admit_key(key)

    def check_loaded(self) -> None:
        if self.base is None:
            raise APIError(503, "the model is still loading", code="model_loading",
                           retry_after=self.config.retry_after_s * 5)

    def admit_key(self, key):
        """Admission for a caller already identified (`key`, or None on an open server):
        its rate limits, then the engine's queue and the in-flight cap."""
        self.check_loaded()
        if key is not None:
            from .keys import RateLimited

            try:
                self.limiter.check_request(key)
            except RateLimited as e:
                self.metrics.refusals.labels("rate_limit").inc()
                raise APIError(429, f"rate limit reached ({e.limit_name} per minute); retry in "
                                    f"{e.retry_after_seconds:.0f} s", code="rate_limit_exceeded",
                               retry_after=e.retry_after_seconds) from None
        engine = getattr(self.base.generator, "engine", None)
        stats = engine.stats() if engine is not None else None
        if stats and stats["waiting"] >= engine.config.max_waiting and stats["running"] >= engine.max_running:
            self.metrics.refusals.labels("engine_queue").inc()
            raise overloaded("the engine's queue is full; retry shortly", self.config.retry_after_s)
        with self._lock:
            if self._in_flight >= self.config.max_in_flight:
                self.metrics.refusals.labels("in_flight").inc()
                raise overloaded(f"the server is answering {self._in_flight} requests, its limit; retry shortly",
                                 self.config.retry_after_s)
            self._in_flight += 1
        self.metrics.in_flight.inc()
        return key

    def release(self, key, tokens: int) -> None:
        with self._lock:
            self._in_flight -= 1
        self.metrics.in_flight.dec()
        if key is not None and tokens:
            self.limiter.charge_tokens(key, tokens)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server has {self.model_name!r}",
                           "model", "model_not_found")

    # ------------------------------------------------------------ parameters

    def sampling(self, req, max_tokens: int | None) -> SamplingParams:
        d = self.base.params
        if max_tokens is not None and max_tokens > self.config.max_tokens_cap:
            raise bad_request(f"max_tokens is {max_tokens}, above this server's cap of "
                              f"{self.config.max_tokens_cap}", "max_tokens")
        try:
            return SamplingParams(
                max_new_tokens=d.max_new_tokens if max_tokens is None else max_tokens,
                temperature=d.temperature if req.temperature is None else req.temperature,
                top_p=d.top_p if req.top_p is None else req.top_p,
                top_k=d.top_k if req.top_k is None else req.top_k,
                repetition_penalty=d.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
                seed=req.seed, stop=req.stop_list())
        except ValueError as e:
            raise bad_request(f"invalid sampling parameters: {e}") from None

    def json_constraint(self, schema: dict | None):
        """A compiled JSON grammar for response_format, cached per schema."""
        try:
            from ..engine.constrained import JsonConstraint
        except ImportError as e:
            raise APIError(400, f"response_format needs constrained decoding, not installed here: {e}",
                           "response_format") from None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._constraints:
            try:
                self._constraints[key] = JsonConstraint.compile(self.base.generator.loaded.tokenizer, schema)
            except (ValueError, TypeError, RuntimeError) as e:
                raise bad_request(f"response_format: invalid JSON schema: {e}", "response_format") from None
        return self._constraints[key]

    # ------------------------------------------------------------ chat completions

    def _runs(self, prepared) -> list[Run]:
        return [Run(i, (lambda a=agent, c=conv: a.complete(c))) for i, (agent, conv, _) in enumerate(prepared)]

    def _raise_for(self, runs: list[Run]) -> None:
        error = client_error(runs, "messages")
        if error is not None:
            raise error

    def _observe(self, runs: list[Run], started: float) -> None:
        for run in runs:
            self.metrics.observe_tokens(None if run.first_at is None else run.first_at - started, run.times)

    def moderate_input(self, req: ChatCompletionRequest, user_id: int = 0):
        """The moderation verdict on the request's last user message (None: allowed); a block is recorded."""
        if self.moderator is None:
            return None
        users = [m for m in req.messages if m.role == "user"]
        content = users[-1].content if users else None
        text = content if isinstance(content, str) else " ".join(
            p.get("text", "") for p in content or [] if isinstance(p, dict) and isinstance(p.get("text"), str))
        verdict = self.moderator.check_input(text)
        if verdict is not None:
            self.record_block(verdict, user_id)
        return verdict

    def record_block(self, verdict, user_id: int = 0, conversation_id: str | None = None,
                     message_id: str | None = None, keep_text: bool = True) -> None:
        """Count and store what moderation blocked (keep_text=False: a user with logging off)."""
        self.metrics.refusals.labels("moderation").inc()
        if self.store is not None:
            from .conversations import record_moderation

            record_moderation(self.store, user_id, verdict.stage, verdict.rule, verdict.text if keep_text else None,
                              conversation_id, message_id)

    async def chat(self, req: ChatCompletionRequest, box: dict | None = None, user_id: int = 0) -> dict:
        if self.moderate_input(req, user_id) is not None:
            return chat_api.blocked_response(self.model_name, req.n)
        prepared = chat_api.prepare(self, req)
        runs, stop, started = self._runs(prepared), threading.Event(), time.monotonic()
        events: list[list] = [[] for _ in prepared]
        async for index, event in run_all(runs, started + self.config.request_timeout_s, stop):
            events[index].append(event)
        self._raise_for(runs)
        self._observe(runs, started)
        choices = []
        for (agent, conv, plugins), run, evs in zip(prepared, runs, events):
            message, finish = chat_api.message_of(agent, conv.turns[-1], evs, plugins, len(conv.turns))
            if self.moderator is not None and isinstance(message.get("content"), str):
                gate = self.moderator.output_gate()
                if gate.feed(message["content"]) or gate.finish():
                    self.record_block(gate.blocked, user_id)
                    message["content"], finish = gate.safe_text, "content_filter"
            choice = {"index": run.index, "message": message, "logprobs": None,
                      "finish_reason": "length" if run.timed_out else finish}
            if req.logprobs:
                choice["logprobs"] = chat_api.logprobs_content(self.base.generator.loaded.tokenizer,
                                                               agent.last_logprobs, message.get("content"))
            choices.append(choice)
        usage = chat_api.usage_of([a for a, _, _ in prepared])
        self._count(usage, box)
        return {"id": chat_api.new_id("chatcmpl"), "object": "chat.completion", "created": chat_api.now(),
                "model": self.model_name, "choices": choices, "usage": usage}

    async def chat_stream(self, req: ChatCompletionRequest, box: dict | None = None, user_id: int = 0):
        """Validate now (errors before the first byte), then return the SSE body's async iterator."""
        if self.moderate_input(req, user_id) is not None:
            return chat_api.blocked_chunks(self.model_name, req.n)
        prepared = chat_api.prepare(self, req)
        return self._chat_chunks(req, prepared, box, user_id)

    async def _chat_chunks(self, req, prepared, box, user_id: int = 0):
        cid, created, model = chat_api.new_id("chatcmpl"), chat_api.now(), self.model_name
        runs, stop, started = self._runs(prepared), threading.Event(), time.monotonic()
        thoughts = [chat_api.ThoughtsStream() for _ in prepared]
        gates = [self.moderator.output_gate() if self.moderator is not None else None for _ in prepared]
        for i in range(len(prepared)):
            yield chat_api.chunk(cid, created, model, [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}])
        async for index, event in run_all(runs, started + self.config.request_timeout_s, stop):
            agent, conv, plugins = prepared[index]
            if event.kind == "tool_calls":
                for j, call in enumerate(chat_api.tool_calls(conv.turns[-1], plugins, len(conv.turns))):
                    head = {"index": j, "id": call["id"], "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""}}
                    rest = {"index": j, "function": {"arguments": call["function"]["arguments"]}}
                    for part in (head, rest):
                        yield chat_api.chunk(cid, created, model, [{"index": index, "delta": {"tool_calls": [part]},
                                                                    "logprobs": None, "finish_reason": None}])
                continue
            gate = gates[index]
            if gate is not None and (gate.blocked or (event.kind == "text" and gate.feed(event.text))):
                if len(prepared) == 1:
                    stop.set()  # the run stops at its next token
                continue  # nothing more of this choice is sent
            delta = chat_api.delta_for(event, thoughts[index])
            if delta is not None:
                yield chat_api.chunk(cid, created, model, [{"index": index, "delta": delta, "logprobs": None,
                                                            "finish_reason": None}])
        error = client_error(runs, "messages")
        if error is not None:
            yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
        self._observe(runs, started)
        for (agent, conv, plugins), run in zip(prepared, runs):
            if run.error is not None:
                continue
            called = conv.turns[-1].reply is None and conv.turns[-1].commands is not None
            finish = "length" if run.timed_out else ("tool_calls" if called else agent.last_finish_reason)
            gate = gates[run.index]
            if gate is not None and not called and (gate.blocked or gate.finish()):
                self.record_block(gate.blocked, user_id)
                finish = "content_filter"
            last = {"index": run.index, "delta": {}, "logprobs": None, "finish_reason": finish}
            if req.logprobs:
                last["logprobs"] = chat_api.logprobs_content(self.base.generator.loaded.tokenizer, agent.last_logprobs,
                                                             conv.turns[-1].reply)
            yield chat_api.chunk(cid, created, model, [last])
        usage = chat_api.usage_of([a for a, _, _ in prepared])
        self._count(usage, box)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield chat_api.chunk(cid, created, model, [], usage=usage)
        yield "data: [DONE]\n\n"

    def _count(self, usage: dict, box: dict | None) -> None:
        """Count a request's tokens; `box` carries them back to the caller (the key's token bucket)."""
        if box is not None:
            box["tokens"] = usage["total_tokens"]
        self.metrics.prompt_tokens.inc(usage["prompt_tokens"])
        self.metrics.completion_tokens.inc(usage["completion_tokens"])

    # ------------------------------------------------------------ completions

    async def completion(self, req: CompletionRequest, box: dict | None = None):
        from .completions import complete, stream_completion

        if req.stream:
            return stream_completion(self, req, box)
        return await complete(self, req, box)
