"""The serving engine: continuous batching over one model, with streaming and cancellation.

One background thread runs the loop. Each step:
  1. drops cancelled requests (their slots are free for the next step) and
     admits waiting ones while slots and `max_running` allow;
  2. runs one batched decode forward for every request that is generating;
  3. runs one batched prefill forward over the prompts still being read, at
     most `prefill_chunk` tokens in all, so a long prompt is cut into chunks
     and never stalls the running decodes for more than one chunk.
Requests join and leave between steps. Each has its own sampling parameters,
stop strings, token budget and, when seeded, its own random generator, so its
tokens do not depend on what else is in the batch.

The model is any transformers causal LM whose attention calls `cache.update`
(Llama, Qwen2, Mistral, GGUF loaded through transformers...). The engine only
passes its own cache (kv_cache.SlotKV), a 4-D attention mask and positions:
no model code of its own.

`submit()` returns a handle: iterate it (or `async for`) for text deltas made
of whole characters, `cancel()` it, read `.result` when done. A full queue is
refused at once with `EngineFull`; a prompt that can never fit with
`RequestTooLarge`. With `SamplingParams.logprobs`, `handle.logprobs` grows by
one entry per token before its text is queued; a yielded delta covers
`handle.logprobs[previous:handle.streamed_tokens]`. `prompt_logprobs` turns
prefix reuse off for its request. n > 1 is n submits of one prompt: a request
sharing a prefix with a prompt still in prefill waits for it and copies its KV.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from . import cpu, runner
from .detokenizer import IncrementalDetokenizer, StopMatcher
from .generate import Generation, _cache_keyword
from .kv_cache import MIN_PREFIX_COPY, SlotKV, SlotTable, common_prefix
from .logprobs import prompt_chunk_logprobs, token_logprobs
from .sampling import SamplingParams, sample_next


class EngineFull(RuntimeError):
    """max_running and max_waiting are both full: the request is refused, not queued."""


class RequestTooLarge(ValueError):
    """The prompt cannot fit in one KV slot (max_seq_len) however long it waits."""


class EngineStopped(RuntimeError):
    pass


@dataclass
class EngineConfig:
    max_running: int = 16          # requests generating at once (batch rows)
    max_waiting: int = 64          # requests queued for a slot; beyond: EngineFull
    max_seq_len: int | None = None  # tokens per slot (prompt + reply); default: the model's context, at most 4096
    kv_budget_mb: float = 2048.0   # memory for the KV cache; sets the number of slots
    prefill_chunk: int = 256       # prompt tokens read per step, over all prefilling requests
    prefix_caching: bool = True    # reuse the KV of prompt prefixes already in a slot
    cpu_fast_paths: bool = True    # on CPU: release the loading thread's OpenMP team, oneDNN-packed weights (cpu.py)
    packed_linears: str = "auto"   # auto: packed where it measures faster on this CPU (cpu.py) | always | never
    own_decoder: bool = True       # run Llama-family layers with runner.py (fewer calls a step) where it applies
    kv_dtype: str = "auto"         # the KV cache's dtype: auto | model | fp32 | bf16 | fp16 (kv_cache_dtype below)


KV_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def kv_cache_dtype(setting: str, model_dtype: torch.dtype, decoder_runner) -> torch.dtype:
    """The KV cache's dtype. `auto` takes fp16 where the int4/int8 decode step (csrc/q4_cpu.cpp) runs on an
    fp32 model: at 16 streams attention reads more cache than weights, and fp16 halves it (llama.cpp's
    default cache is f16 too); the step widens each key and value to fp32 as it reads it. Elsewhere, and with
    `model`, the cache keeps the model's dtype. Another dtype than the model's needs mosslm's own decoder,
    which widens the cache for attention; transformers' layers would get mixed dtypes."""
    if setting == "model":
        return model_dtype
    if setting == "auto":
        fast_step = decoder_runner is not None and decoder_runner.q4_step is not None
        return torch.float16 if fast_step and model_dtype == torch.float32 else model_dtype
    if setting not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be auto, model, {', '.join(KV_DTYPES)}; got {setting!r}")
    chosen = KV_DTYPES[setting]
    if chosen != model_dtype and decoder_runner is None:
        raise ValueError(f"kv_dtype {setting} differs from the model's {model_dtype} and needs mosslm's own decoder "
                         f"(own_decoder), which this model cannot use")
    return chosen


@dataclass
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    handle: RequestHandle
    slot: int = -1
    done_tokens: int = 0           # tokens whose KV is in the slot
    generated: list[int] = field(default_factory=list)
    pending: int | None = None     # the last sampled token, fed at the next decode step
    generator: torch.Generator | None = None
    detok: IncrementalDetokenizer | None = None
    matcher: StopMatcher | None = None
    max_new: int = 0
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    constraint: Any = None         # the per-request state of params.constraint

    @property
    def prefilling(self) -> bool:
        return self.done_tokens < len(self.prompt)


_DONE = object()


class RequestHandle:
    """A submitted request: iterate for text deltas; cancel; `.result` when finished."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.Queue = queue.Queue()
        self.result = Generation()
        self.finished = threading.Event()
        self.cancelled = False
        self.ttft: float | None = None        # seconds from submit to the first token
        self.token_times: list[float] = []    # monotonic time of each generated token
        self.streamed_tokens = 0              # generated tokens covered by the text yielded so far

    @property
    def logprobs(self) -> list | None:
        """TokenLogprob of each generated token so far (None unless params.logprobs is set)."""
        return self.result.logprobs

    def _item(self, item):
        if isinstance(item, BaseException):
            raise item
        text, self.streamed_tokens = item
        return text

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the start of the next engine step."""
        self.cancelled = True
        self._engine._wake()

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            yield self._item(item)

    async def __aiter__(self) -> AsyncIterator[str]:
        while True:
            item = await asyncio.to_thread(self._queue.get)
            if item is _DONE:
                return
            yield self._item(item)

    def wait(self, timeout: float | None = None) -> Generation:
        for _ in self:
            pass
        self.finished.wait(timeout)
        return self.result


class Engine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, stop_token_ids: list[int] = ()) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = cfg = config or EngineConfig()
        mc = model.config
        context = getattr(mc, "max_position_embeddings", None) or 2048
        self.max_seq_len = cfg.max_seq_len or min(context, 4096)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cpu_paths = cfg.cpu_fast_paths and self.device.type == "cpu"
        if cfg.packed_linears not in ("auto", "always", "never"):
            raise ValueError(f"packed_linears must be auto, always or never, got {cfg.packed_linears!r}")
        self.packing = (cpu.pack_linears(model, cfg.max_running, measure=cfg.packed_linears == "auto")
                        if cpu_paths and cfg.packed_linears != "never" else None)
        self.packed = bool(self.packing)
        why_not = runner.unsupported_reason(model, self.max_seq_len) if cfg.own_decoder else "turned off"
        self.runner = runner.DecoderRunner(model) if why_not is None else None
        self.runner_note = "own decoder" if why_not is None else f"transformers' decoder ({why_not})"
        self.kv_dtype = kv_cache_dtype(cfg.kv_dtype, self.dtype, self.runner)
        per_token = SlotKV.bytes_per_token(mc) * self.kv_dtype.itemsize
        n_slots = int(cfg.kv_budget_mb * 2**20 // (per_token * self.max_seq_len))
        # Slots beyond max_running only keep prefixes for reuse; a few dozen are plenty.
        n_slots = min(n_slots, 2 * cfg.max_running + 16)
        if n_slots < 1:
            raise ValueError(f"a KV budget of {cfg.kv_budget_mb} MB holds no slot of {self.max_seq_len} tokens "
                             f"({per_token * self.max_seq_len / 2**20:.1f} MB each); raise kv_budget_mb or "
                             f"lower max_seq_len")
        self.max_running = min(cfg.max_running, n_slots)
        heads = mc.num_attention_heads
        self.kv = SlotKV(mc.num_hidden_layers, n_slots, getattr(mc, "num_key_value_heads", None) or heads,
                         getattr(mc, "head_dim", None) or mc.hidden_size // heads, self.max_seq_len,
                         self.kv_dtype, self.device)
        self.slots = SlotTable(n_slots)
        self.stop_token_ids = set(stop_token_ids)
        self.decoder = model.get_decoder()
        self._cache_kw = _cache_keyword(self.decoder)
        self.head = model.get_output_embeddings()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._stopped = False
        self.steps = 0
        if cpu_paths:
            cpu.release_openmp_team()  # last: allocating the cache above runs parallel fills on this thread
        self._thread = threading.Thread(target=self._loop, name="mosslm-engine", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)  # a thread still inside torch at interpreter exit aborts the process

    # ------------------------------------------------------------ public API

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) >= self.max_seq_len:
            raise RequestTooLarge(f"the prompt has {len(prompt)} tokens; a request holds at most "
                                  f"{self.max_seq_len} tokens (prompt + reply) in the KV cache, so it can never "
                                  f"run: shorten the prompt or raise max_seq_len")
        handle = RequestHandle(self)
        req = Request(next(self._ids), list(prompt), params, handle)
        req.max_new = min(params.max_new_tokens, self.max_seq_len - len(prompt))
        req.detok, req.matcher = IncrementalDetokenizer(self.tokenizer), StopMatcher(params.stop)
        if params.seed is not None:
            req.generator = torch.Generator().manual_seed(params.seed)
        handle.result.prompt_tokens = len(prompt)
        if params.logprobs is not None:
            handle.result.logprobs = []
        if params.prompt_logprobs is not None:
            handle.result.prompt_logprobs = [None]
        if params.constraint is not None:
            req.constraint = params.constraint.new_state()
        with self._cv:
            if self._stopped:
                raise EngineStopped("the engine is shut down")
            if len(self._running) >= self.max_running and len(self._waiting) >= self.config.max_waiting:
                raise EngineFull(f"the engine is full: {len(self._running)} requests running (max_running) and "
                                 f"{len(self._waiting)} waiting (max_waiting); retry later")
            self._waiting.append(req)
            self._cv.notify()
        return handle

    def generate(self, prompt: list[int], params: SamplingParams) -> Generation:
        return self.submit(prompt, params).wait()

    def stats(self) -> dict:
        with self._lock:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "free_slots": self.slots.free_count(), "steps": self.steps,
                    "prefix_hit_tokens": self.slots.prefix_hits, "prompt_tokens": self.slots.prefix_lookups}

    def shutdown(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        atexit.unregister(self.shutdown)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stopped:
                    for r in list(self._waiting) + self._running:
                        r.handle._queue.put(EngineStopped("the engine is shut down"))
                    return
                self._schedule()
                batch = list(self._running)
            try:
                self._step(batch)
            except Exception as e:  # a broken step fails its requests, not the engine
                with self._cv:
                    for r in batch:
                        self._finish(r, error=e)
            self.steps += 1

    def _schedule(self) -> None:
        """Under the lock: free cancelled requests, admit waiting ones."""
        for r in [r for r in self._running if r.handle.cancelled]:
            r.handle.result.finish_reason = "cancelled"
            self._finish(r)
        for r in [r for r in self._waiting if r.handle.cancelled]:
            self._waiting.remove(r)
            r.handle.result.finish_reason = "cancelled"
            r.handle._queue.put(_DONE)
            r.handle.finished.set()
        for r in list(self._waiting):
            if len(self._running) >= self.max_running or not self.slots.free_count():
                break
            reuse = self.config.prefix_caching and r.params.prompt_logprobs is None
            if reuse and self._wait_for_prefix(r):
                continue
            self._waiting.remove(r)
            r.slot, r.done_tokens = self.slots.acquire(r.prompt, self.kv, reuse=reuse)
            self._running.append(r)

    def _wait_for_prefix(self, r: Request) -> bool:
        """A running request is still prefilling a prompt that shares a reusable prefix with r's."""
        return any(o.prefilling and min(common_prefix(r.prompt, o.prompt), len(r.prompt) - 1) >= MIN_PREFIX_COPY
                   for o in self._running)

    def _finish(self, r: Request, error: BaseException | None = None) -> None:
        """Under the lock: release the slot (its KV stays for prefix reuse) and end the stream."""
        if r in self._running:
            self._running.remove(r)
            self.slots.release(r.slot)
        if error is not None:
            r.handle._queue.put(error)
        r.handle._queue.put(_DONE)
        r.handle.finished.set()

    @torch.inference_mode()
    def _step(self, batch: list[Request]) -> None:
        decode = [r for r in batch if not r.prefilling]
        if decode:
            decode.sort(key=lambda r: r.slot)  # consecutive slots let attention read the cache without a copy
            logits = self._forward([r.slot for r in decode], [[r.pending] for r in decode],
                                   [r.done_tokens for r in decode])
            for r in decode:
                self.slots.extend(r.slot, [r.pending])
                r.done_tokens += 1
            self._sample(decode, logits)
        budget = self.config.prefill_chunk
        rows: list[tuple[Request, list[int]]] = []
        for r in batch:
            if r.prefilling and budget > 0 and not r.handle.cancelled:
                chunk = r.prompt[r.done_tokens: r.done_tokens + budget]
                rows.append((r, chunk))
                budget -= len(chunk)
        if rows:
            full = {i: None for i, (r, _) in enumerate(rows) if r.params.prompt_logprobs is not None}
            logits = self._forward([r.slot for r, _ in rows], [c for _, c in rows], [r.done_tokens for r, _ in rows],
                                   full)
            done = []
            for i, (r, chunk) in enumerate(rows):
                if i in full:
                    r.handle.result.prompt_logprobs += prompt_chunk_logprobs(full[i], r.prompt, r.done_tokens,
                                                                             r.params.prompt_logprobs)
                self.slots.extend(r.slot, chunk)
                r.done_tokens += len(chunk)
                if not r.prefilling:
                    done.append(i)
            if done:
                self._sample([rows[i][0] for i in done], logits[done])

    def _forward(self, slots: list[int], tokens: list[list[int]], starts: list[int],
                 full: dict[int, torch.Tensor | None] | None = None) -> torch.Tensor:
        """One forward over rows of new tokens; returns each row's logits at its last real token.

        For each row index in `full`, its logits at every real position are stored there too."""
        lengths = [len(t) for t in tokens]
        n = max(lengths)
        ids = torch.tensor([t + [0] * (n - len(t)) for t in tokens], dtype=torch.long)
        self.kv.plan(slots, starts, lengths)
        kv_len = self.kv.kv_len
        q_pos = torch.tensor(starts).unsqueeze(1) + torch.arange(n).unsqueeze(0)          # [B, n]
        if self.runner is not None and self.device.type == "cpu" and self.runner._q4_applies(ids, self.kv):
            mask = None  # the C++ decode step attends over each row's own positions: no mask to build
        else:
            allowed = torch.arange(kv_len).view(1, 1, kv_len) <= q_pos.unsqueeze(2)        # causal, per row
            mask = torch.zeros(len(tokens), 1, n, kv_len, dtype=self.dtype)
            mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(self.dtype).min)
            mask = mask.to(self.device)
        with cpu.engine_calls() if self.packed else contextlib.nullcontext():
            if self.runner is not None:
                states = self.runner(ids.to(self.device), mask, q_pos.to(self.device), self.kv)
            else:
                states = self.decoder(input_ids=ids.to(self.device), attention_mask=mask,
                                      position_ids=q_pos.to(self.device), use_cache=True,
                                      **{self._cache_kw: self.kv}).last_hidden_state
            hidden = states[torch.arange(len(tokens)), torch.tensor(lengths) - 1]
            for b in full or ():
                full[b] = self.head(states[b, : lengths[b]]).float()
            return self.head(hidden).float()

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> None:
        now = time.monotonic()
        finished = []
        plain = [r.params.greedy and r.constraint is None and r.params.repetition_penalty == 1.0 for r in reqs]
        argmax = logits.argmax(-1).tolist() if any(plain) else None  # greedy rows in one call
        for i, (r, row) in enumerate(zip(reqs, logits)):
            if plain[i]:
                token = argmax[i]
            else:
                seen = (torch.tensor(r.prompt + r.generated).unique() if r.params.repetition_penalty != 1.0
                        else row.new_empty(0, dtype=torch.long))
                if r.constraint is not None:  # only grammar tokens: the grammar ends the request, never a stop token
                    row = r.constraint.mask_logits(row, self.stop_token_ids | set(r.params.stop_token_ids))
                token = sample_next(row, r.params, seen, r.generator)
            h = r.handle
            if r.first_token_at is None:
                r.first_token_at = now
                h.ttft = now - r.submitted
            if token in self.stop_token_ids or token in r.params.stop_token_ids:
                h.result.finish_reason = "stop"
                if r.params.logprobs is not None:
                    h.result.stop_logprob = token_logprobs(logits[i: i + 1], [token], r.params.logprobs)[0]
                h.result.stopped_on = self.tokenizer.convert_ids_to_tokens(token)
                finished.append(r)
                continue
            r.generated.append(token)
            h.result.token_ids.append(token)
            h.token_times.append(now)
            if r.params.logprobs is not None:  # from the raw logits, as vLLM reports them
                h.result.logprobs += token_logprobs(logits[i: i + 1], [token], r.params.logprobs)
            if r.constraint is not None:
                r.constraint.advance(token)
            delta = r.matcher.feed(r.detok.push(token))
            if delta:
                h.result.text += delta
                h._queue.put((delta, len(r.generated)))
            if r.matcher.stopped_on is not None:
                h.result.finish_reason, h.result.stopped_on = "stop", r.matcher.stopped_on
                finished.append(r)
            elif r.constraint is not None and r.constraint.done:
                h.result.finish_reason = "stop"
                finished.append(r)
            elif len(r.generated) >= r.max_new:
                h.result.finish_reason = "length"
                finished.append(r)
            else:
                r.pending = token
        for r in finished:
            if r.matcher.stopped_on is None:
                tail = r.matcher.feed(r.detok.flush())
                if r.matcher.stopped_on is not None:
                    r.handle.result.finish_reason, r.handle.result.stopped_on = "stop", r.matcher.stopped_on
                else:
                    tail += r.matcher.flush()
                if tail:
                    r.handle.result.text += tail
                    r.handle._queue.put((tail, len(r.generated)))
        if finished:
            with self._cv:
                for r in finished:
                    self._finish(r)
