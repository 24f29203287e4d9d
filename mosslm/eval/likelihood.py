"""Batched log-likelihood scoring: the engine of every log-likelihood task (multiple choice, bits per byte).

A request is (context ids, continuation ids); its score is the sum of log p(continuation | context) and
whether greedy decoding would have produced the continuation, the two numbers lm-evaluation-harness keeps.
One-token continuations of one context share a model row. Rows that start with the same long prefix
(a few-shot prompt's header and solved examples, the same for every question of a subject) run it once and
reuse its KV cache for their own suffixes. The other rows are sorted by length and run in left-padded
batches, so every row's continuation ends at the last position. Either way only the positions a
continuation needs go through the output head: a batch of 16 prompts over SmolLM2's 49k vocabulary holds a
few MB of logits instead of GBs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from mosslm.engine.kv_cache import common_prefix


@dataclass(frozen=True)
class Scored:
    logprob: float
    greedy: bool


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a (context, continuation) pair the way the harness splits them: the context's trailing
    whitespace moves to the continuation, the whole text is encoded once, and the continuation is what follows
    the context's own encoding (so a merge across the boundary is not split differently)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    head = tokenizer.encode(context, add_special_tokens=False)
    if len(whole) <= len(head):  # the continuation merged into the context's last tokens: encode it alone
        return head, tokenizer.encode(continuation, add_special_tokens=False)
    return whole[:len(head)], whole[len(head):]


def prefix_token(tokenizer) -> int:
    """What an empty context is conditioned on: BOS where the tokenizer has one, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start an empty context")


def max_length(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or 2048)


def _rows(requests: list[tuple[list[int], list[int]]], limit: int, prefix: int) -> list[tuple[list[int], list]]:
    """Model inputs and the requests each answers: one-token continuations of the same context share one
    row (a multiple-choice question's four letters need one forward, as in CMMLU's own scoring)."""
    rows: list[tuple[list[int], list]] = []
    shared: dict[tuple[int, ...], int] = {}
    for i, (context, cont) in enumerate(requests):
        if not cont:
            raise ValueError("a continuation must have at least one token")
        context = context or [prefix]
        ids = (context + cont)[-(limit + 1):][:-1]  # the last token is predicted, never read
        cont = cont[-len(ids):] if len(cont) > len(ids) else cont
        if len(cont) == 1:
            key = tuple(ids)
            if key in shared:
                rows[shared[key]][1].append((i, cont))
                continue
            shared[key] = len(rows)
        rows.append((ids, [(i, cont)]))
    return rows


def _score(logp: torch.Tensor, members: list, out: list) -> None:
    """logp: [positions, vocab] ending at the row's last input; each member's continuation ends there too."""
    for i, cont in members:
        rows_lp = logp[logp.shape[0] - len(cont):]
        target = torch.tensor(cont, device=rows_lp.device)
        picked = rows_lp.gather(1, target[:, None]).squeeze(1)
        out[i] = Scored(float(picked.sum()), bool((rows_lp.argmax(-1) == target).all()))


def shared_prefix_groups(rows: list[tuple[list[int], list]], min_shared: int) -> tuple[list, list]:
    """(groups, alone): rows whose inputs start with the same `min_shared` or more tokens (a few-shot
    prompt's header and solved examples) as (prefix length, rows), in token order; the rest alone. Every row
    keeps at least its continuations' positions after the prefix."""
    ordered = sorted(rows, key=lambda row: row[0])
    groups, alone, current, shared = [], [], [], 0
    for row in ordered:
        room = len(row[0]) - max(len(c) for _, c in row[1])
        if current:
            common = min(shared, common_prefix(current[0][0], row[0]), room)
            if common >= min_shared:
                current.append(row)
                shared = common
                continue
            (groups.append((shared, current)) if len(current) > 1 else alone.extend(current))
        current, shared = [row], room
    if current:
        (groups.append((shared, current)) if len(current) > 1 and shared >= min_shared else alone.extend(current))
    return groups, alone


def _bar(progress: str | None, total: int):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=progress, unit="req", dynamic_ncols=True, leave=False)


@torch.no_grad()
def _score_shared(model, prefix_len: int, rows: list, batch_size: int, pad: int, out: list, bar) -> None:
    """One forward over the shared prefix, its KV cache repeated for batches of the rows' own suffixes
    (right-padded; the output head runs only on the positions a continuation needs)."""
    import copy

    device = next(model.parameters()).device
    prefix = torch.tensor([rows[0][0][:prefix_len]], device=device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    # transformers 5.x renames `past_key_values` to `cache` (the old name warns)
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    cache = getattr(decoder(input_ids=prefix, use_cache=True), cache_arg)
    rows = sorted(rows, key=lambda row: len(row[0]))  # similar lengths together: little padding
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        tails = [ids[prefix_len:] for ids, _ in batch]
        width = max(map(len, tails))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for r, tail in enumerate(tails):
            ids[r, :len(tail)] = torch.tensor(tail)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(batch))
        positions = torch.arange(prefix_len, prefix_len + width).expand(len(batch), -1)
        # No padding mask: the pads come after each row's own tokens, which (causal) never attend to them,
        # and the pads' outputs are not read.
        hidden = decoder(input_ids=ids.to(device), position_ids=positions.to(device),
                         use_cache=True, **{cache_arg: past}).last_hidden_state
        for r, ((_, members), tail) in enumerate(zip(batch, tails)):
            keep = max(len(c) for _, c in members)
            logp = torch.log_softmax(head(hidden[r, len(tail) - keep:len(tail)]).float(), dim=-1)
            _score(logp, members, out)
            if bar is not None:
                bar.update(len(members))


# Rows sharing at least this many leading tokens share one prefix forward (few-shot prompts of a subject).
MIN_SHARED_PREFIX = 64


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: list[tuple[list[int], list[int]]], batch_size: int = 16,
                   progress: str | None = None, share_prefixes: bool = True) -> list[Scored]:
    """Scores every (context, continuation) request; the context is cut from the left to fit the model.
    `batch_size` counts model rows (a question's one-token options share one). With `share_prefixes`,
    rows that start with the same MIN_SHARED_PREFIX+ tokens run their common prefix once."""
    device = next(model.parameters()).device
    rows = _rows(requests, max_length(model), prefix_token(tokenizer))
    out: list[Scored | None] = [None] * len(requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token(tokenizer)
    bar = _bar(progress, len(requests))
    if share_prefixes and hasattr(model, "get_decoder") and model.get_output_embeddings() is not None:
        groups, rows = shared_prefix_groups(rows, MIN_SHARED_PREFIX)
        for prefix_len, members in groups:
            _score_shared(model, prefix_len, members, batch_size, pad, out, bar)
    rows.sort(key=lambda row: -len(row[0]))
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        keep = max(len(cont) for _, members in batch for _, cont in members)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (row, _) in enumerate(batch):
            ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep, use_cache=False).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for r, (_, members) in enumerate(batch):
            _score(logp[r], members, out)
            if bar is not None:
                bar.update(len(members))
    if bar is not None:
        bar.close()
    return out  # type: ignore[return-value]


def rolling_requests(tokens: list[int], prefix: int, window: int) -> list[tuple[list[int], list[int]]]:
    """A document as disjoint windows of `window` predicted tokens: the first conditioned on the prefix
    token, each later one on the tokens just before it (up to a full window of context)."""
    requests, done = [], 0
    while done < len(tokens):
        cont = tokens[done:done + window]
        context = tokens[max(0, done - window):done] if done else [prefix]
        requests.append((context[-(window - len(cont)) - 1:] if done else context, cont))
        done += len(cont)
    return requests
