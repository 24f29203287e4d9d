"""Bits per byte on text files: a model's compression of text, comparable across tokenizers.

Each file is split into documents at blank lines. A document's tokens are scored in disjoint windows of
the model's context (the first token conditioned on BOS, or EOS where there is none, which is never
scored); special tokens that the text encodes to are not scored, and their bytes are not counted, so
the figure measures text only. bpb = -sum(log p) / ln 2 / UTF-8 bytes, summed over every document, which
is lm-evaluation-harness's `bits_per_byte` on the same documents.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .likelihood import loglikelihoods, max_length, prefix_token, rolling_requests


class BpbError(ValueError):
    pass


def documents(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise BpbError(f"no text file at {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BpbError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    if not docs:
        raise BpbError(f"{p} holds no text")
    return docs


def _scored_pieces(tokenizer, doc: str) -> list[tuple[list[int], int]]:
    """(token ids, UTF-8 bytes) of the doc's text between special tokens."""
    special = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, special)) + ")", doc) if special else [doc]
    return [(tokenizer.encode(part, add_special_tokens=False), len(part.encode("utf-8")))
            for part in parts if part and part not in special]


def bits_per_byte(model, tokenizer, paths: list[str | Path], batch_size: int = 8, window: int | None = None,
                  progress: bool = True) -> dict:
    window = window or max_length(model)
    prefix = prefix_token(tokenizer)
    requests, total_bytes, tokens = [], 0, 0
    for path in paths:
        for doc in documents(path):
            for ids, size in _scored_pieces(tokenizer, doc):
                total_bytes += size
                tokens += len(ids)
                requests += rolling_requests(ids, prefix, window) if ids else []
    scores = loglikelihoods(model, tokenizer, requests, batch_size, progress="bpb" if progress else None)
    nll = -sum(s.logprob for s in scores)
    return {"bpb": nll / math.log(2) / total_bytes, "bytes": total_bytes, "tokens": tokens,
            "bytes_per_token": total_bytes / max(tokens, 1)}
