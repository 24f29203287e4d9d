"""The single-sequence decode loop with a KV cache.

The batched, async engine of the serving stack builds on the same pieces
(sampling, detokenizer, stop matching).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .detokenizer import IncrementalDetokenizer, StopMatcher
from .logprobs import TokenLogprob
from .sampling import SamplingParams, sample_next


class ContextTooLong(ValueError):
    """The prompt leaves no room for generation within the model's context."""


def _cache_keyword(model) -> str:
    """transformers >= 5.2x names the KV cache argument `cache`; older releases `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass
class Generation:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (stop string/token) or "length"
    stopped_on: str | None = None
    prompt_tokens: int = 0
    # Filled by the engine (engine.Engine) when SamplingParams asks; None when off:
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry, appended as tokens are produced
    prompt_logprobs: list[TokenLogprob | None] | None = None  # one per prompt token; the first is None
    stop_logprob: TokenLogprob | None = None  # the stop token's, when a stop token ended it with logprobs on


@torch.inference_mode()
def stream(model, tokenizer, prompt_ids: list[int], params: SamplingParams,
           context_length: int | None = None, result: Generation | None = None) -> Iterator[str]:
    """Yield text deltas; fills `result` (if given) with the whole generation."""
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt_ids)
    limit = context_length or getattr(model.config, "max_position_embeddings", None) or 2048
    room = limit - len(prompt_ids)
    if not prompt_ids:
        raise ValueError("empty prompt")
    if room <= 0:
        raise ContextTooLong(f"prompt has {len(prompt_ids)} tokens; the model's context is {limit}")
    max_new = min(params.max_new_tokens, room)
    generator = None
    if params.seed is not None:
        generator = torch.Generator().manual_seed(params.seed)
    stop_ids = set(params.stop_token_ids)
    detok = IncrementalDetokenizer(tokenizer)
    matcher = StopMatcher(params.stop)
    device = next(model.parameters()).device
    seen = torch.tensor(prompt_ids, device=device)
    input_ids = torch.tensor([prompt_ids], device=device)
    cache_kw = _cache_keyword(model)
    cache = DynamicCache()  # updated in place by each forward call
    for _ in range(max_new):
        out = model(input_ids=input_ids, use_cache=True, **{cache_kw: cache})
        token = sample_next(out.logits[0, -1], params, seen.unique() if params.repetition_penalty != 1.0 else seen[:0], generator)
        if token in stop_ids:
            result.finish_reason = "stop"
            result.stopped_on = tokenizer.convert_ids_to_tokens(token)
            break
        result.token_ids.append(token)
        seen = torch.cat([seen, torch.tensor([token], device=device)])
        delta = matcher.feed(detok.push(token))
        if delta:
            result.text += delta
            yield delta
        if matcher.stopped_on is not None:
            result.finish_reason, result.stopped_on = "stop", matcher.stopped_on
            return
        input_ids = torch.tensor([[token]], device=device)
    tail = matcher.feed(detok.flush())
    if matcher.stopped_on is not None:
        result.finish_reason, result.stopped_on = "stop", matcher.stopped_on
    else:
        tail += matcher.flush()
    if tail:
        result.text += tail
        yield tail


def generate(model, tokenizer, prompt_ids: list[int], params: SamplingParams,
             context_length: int | None = None) -> Generation:
    result = Generation()
    for _ in stream(model, tokenizer, prompt_ids, params, context_length, result):
        pass
    return result
