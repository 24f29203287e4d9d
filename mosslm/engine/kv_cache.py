"""The engine's KV cache: one fixed slot per running request, plus prefix reuse.

Why slots and not pages: on a CPU there is no paged-attention kernel, and
SDPA wants each row's keys contiguous. A slot is a row of preallocated
per-layer tensors `[slots + 1, kv_heads, max_len, head_dim]`, so attention
reads a slice of it directly (a view when the batch's slots are consecutive,
one gather of the used length otherwise) and nothing is re-laid out per step.
The cost is that every slot reserves `max_len` tokens; the slot count is
derived from the configured KV budget, so memory never grows past it.

Prefix caching: a finished request's slot keeps its tokens' KV until the slot
is needed again. A new prompt reuses the longest common prefix found in any
slot (the MOSS meta instruction, or the same conversation's earlier turns):
in place when that slot is free, else copied into the new slot, which costs
a memory copy instead of a forward pass.

`SlotKV` plugs into transformers models as their `cache`: the model calls
`update()` per layer; the runner sets where each row's new tokens go first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache

MIN_PREFIX_COPY = 16  # shorter shared prefixes are cheaper to recompute than to copy


class SlotKV(Cache):
    def __init__(self, n_layers: int, n_slots: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        super().__init__(layers=[])
        self.n_slots, self.max_len = n_slots, max_len
        shape = (n_slots + 1, kv_heads, max_len, head_dim)  # the extra slot takes padding writes
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.scratch = n_slots
        # Set by the runner before each forward:
        self.rows: list[int] = []               # slot of each batch row
        self.write_slot: torch.Tensor | None = None  # [B, n] slot of each new token (scratch for padding)
        self.write_pos: torch.Tensor | None = None   # [B, n] position of each new token
        self.kv_len = 0                          # keys to attend over (max length in the batch)

    @staticmethod
    def bytes_per_token(config) -> int:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return config.num_hidden_layers * 2 * kv_heads * head_dim

    def plan(self, rows: list[int], starts: list[int], lengths: list[int]) -> None:
        """Row b writes lengths[b] tokens at positions starts[b]...; shorter rows are padded."""
        n = max(lengths)
        pos = torch.tensor(starts).unsqueeze(1) + torch.arange(n).unsqueeze(0)
        real = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
        slot = torch.tensor(rows).unsqueeze(1).expand(-1, n)
        self.rows = rows
        self.write_slot = torch.where(real, slot, torch.full_like(slot, self.scratch))
        self.write_pos = torch.where(real, pos, torch.zeros_like(pos))
        self.kv_len = max(s + n_ for s, n_ in zip(starts, lengths))

    def _view(self, tensors: list[torch.Tensor], layer: int) -> torch.Tensor:
        full = tensors[layer][:, :, : self.kv_len]
        first = self.rows[0]
        if self.rows == list(range(first, first + len(self.rows))):
            return full[first: first + len(self.rows)]
        return full.index_select(0, torch.tensor(self.rows, device=full.device))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        # [B, H, n, D] -> written as [B, n, H, D] at (slot, :, position)
        self.k[layer_idx][self.write_slot, :, self.write_pos] = key_states.transpose(1, 2).to(self.k[layer_idx].dtype)
        self.v[layer_idx][self.write_slot, :, self.write_pos] = value_states.transpose(1, 2).to(self.v[layer_idx].dtype)
        return self._view(self.k, layer_idx), self._view(self.v, layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.kv_len, 0

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


@dataclass
class Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # the tokens whose KV the slot holds, in order
    busy: bool = False
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SlotTable:
    """Which slot holds which tokens; picks a slot and a reusable prefix for a prompt."""

    def __init__(self, n_slots: int) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self.prefix_hits = 0        # prompt tokens served from cache
        self.prefix_lookups = 0     # prompt tokens asked for

    def free_count(self) -> int:
        return sum(not s.busy for s in self.slots)

    def acquire(self, prompt: list[int], kv: SlotKV, reuse: bool = True) -> tuple[int, int]:
        """(slot, reused) for a prompt: its first `reused` tokens' KV is already in the slot."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise RuntimeError("no free KV slot")  # the scheduler checks first
        limit = len(prompt) - 1 if reuse else 0  # the last prompt token is always run: its logits start the reply
        best, best_len = None, 0
        for s in self.slots:
            n = min(common_prefix(prompt, s.tokens), limit)
            if n > best_len or (n == best_len and best is not None and not s.busy and best.busy):
                best, best_len = s, n
        if best is not None and not best.busy:
            target, reused = best, best_len
        else:
            target = min(free, key=lambda s: (len(s.tokens) > 0, s.last_used))  # empty, else least recent
            reused = 0
            if best is not None and best_len >= MIN_PREFIX_COPY:
                kv.copy_prefix(best.index, target.index, best_len)
                reused = best_len
        target.busy, target.tokens, target.last_used = True, list(prompt[:reused]), time.monotonic()
        self.prefix_hits += reused
        self.prefix_lookups += len(prompt)
        return target.index, reused

    def extend(self, index: int, tokens: list[int]) -> None:
        self.slots[index].tokens.extend(tokens)

    def release(self, index: int) -> None:
        slot = self.slots[index]
        slot.busy, slot.last_used = False, time.monotonic()
