"""Log-probabilities of generated and prompt tokens, as the OpenAI API reports them.

They come from log_softmax of the model's raw logits at each step, before the
repetition penalty, temperature, top-k/top-p or a grammar mask change them
(vLLM reports them the same way). `top` holds the k most likely tokens at that
position, most likely first; k is `SamplingParams.logprobs` (or
`prompt_logprobs`) and may be 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20  # the most alternatives a request may ask for (OpenAI's limit)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token_id, logprob), most likely first


def check_k(name: str, k) -> str | None:
    """A problem message when k is not None or an integer in [0, MAX_LOGPROBS]."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_LOGPROBS:
        return f"{name} must be None (off) or an integer in [0, {MAX_LOGPROBS}], got {k!r}"
    return None


def token_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """One TokenLogprob per row of logits [N, V]: the log-probability of targets[i] under row i."""
    if not targets:
        return []
    lp = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(targets, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
    if k:
        values, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in targets]
    return [TokenLogprob(t, c, top) for t, c, top in zip(targets, chosen, tops)]


def prompt_chunk_logprobs(logits: torch.Tensor, prompt: list[int], start: int, k: int) -> list[TokenLogprob]:
    """Logprobs of the prompt tokens a prefill chunk predicts.

    `logits` [L, V] are the chunk's logits at positions start..start+L-1; position j predicts
    prompt token j+1. The last position of the prompt predicts the first reply token, not a
    prompt token, so a final chunk yields one entry fewer than its length.
    """
    return token_logprobs(logits, prompt[start + 1: start + logits.shape[0] + 1], k)
