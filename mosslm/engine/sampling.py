"""Sampling parameters and the logits -> next token step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .logprobs import check_k


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 40
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)          # stop strings (not included in the output)
    stop_token_ids: list[int] = field(default_factory=list)
    # Engine only (engine.Engine), see logprobs.py and constrained.py:
    logprobs: int | None = None          # None: off; k in 0..20: each generated token's logprob + k alternatives
    prompt_logprobs: int | None = None   # None: off; k: each prompt token's logprob given the ones before it
    constraint: Any = None               # a compiled constrained.JsonConstraint: the reply must match it

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            problems.append(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if not 0.0 < self.repetition_penalty <= 10.0:
            problems.append(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append("stop strings must be non-empty strings")
        problems += [p for p in (check_k("logprobs", self.logprobs),
                                 check_k("prompt_logprobs", self.prompt_logprobs)) if p]
        if self.constraint is not None and not callable(getattr(self.constraint, "new_state", None)):
            problems.append("constraint must be a compiled constraint (constrained.JsonConstraint.compile(...))")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already in the sequence."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(-1, seen, picked)


def sample_next(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor,
                generator: torch.Generator | None) -> int:
    """Pick the next token from a 1-D logits vector."""
    logits = apply_repetition_penalty(logits.float(), seen, params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, -1) >= params.top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1, generator=generator))
