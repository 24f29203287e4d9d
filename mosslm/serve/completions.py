"""/v1/completions: raw text in, text out, straight on the engine (no protocol, no tools).

`echo` + `logprobs` return the prompt's own token log-probs (the first one
null), which is how lm-evaluation-harness's `local-completions` model scores
log-likelihood: it sends token-id prompts with `max_tokens: 1`, `echo: true`,
`logprobs: 1`, and sums `token_logprobs` over the continuation, dropping the last entry (the generated
token's, which with echo is there even when it is a stop token).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

from .chat import new_id, now
from .errors import APIError, bad_request
from .runs import Run, client_error, run_all
from .schemas import CompletionRequest


def _prompts(server, req: CompletionRequest) -> list[list[int]]:
    tok = server.base.generator.loaded.tokenizer
    p = req.prompt
    if isinstance(p, str):
        texts = [p]
    elif p and all(isinstance(x, int) for x in p):
        return [list(p)]
    elif all(isinstance(x, str) for x in p):
        texts = list(p)
    else:
        ids = [list(x) for x in p]
        vocab = len(tok)
        if any(not 0 <= t < vocab for row in ids for t in row):
            raise bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
        return ids
    if not texts:
        raise bad_request("prompt must not be empty", "prompt")
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def _runs(server, req: CompletionRequest):
    prompts = _prompts(server, req)
    if any(not ids for ids in prompts):
        raise bad_request("a prompt must have at least one token", "prompt")
    params = server.sampling(req, req.max_tokens)
    if req.logprobs is not None:
        try:
            params = replace(params, logprobs=req.logprobs,
                             prompt_logprobs=req.logprobs if req.echo else None)
        except TypeError:
            raise bad_request("this server's engine does not return log-probs", "logprobs") from None
    engine = server.base.generator.engine
    limit = engine.max_seq_len
    for ids in prompts:
        if len(ids) + params.max_new_tokens > limit:
            raise APIError(413, f"the prompt has {len(ids)} tokens and max_tokens is {params.max_new_tokens}: "
                                f"more than the {limit} tokens a request may hold", "prompt", "context_length_exceeded")
    jobs, results = [], {}
    for p, ids in enumerate(prompts):
        for i in range(req.n):
            seeded = params if params.seed is None else replace(params, seed=params.seed + i)
            index = p * req.n + i
            jobs.append((index, ids, seeded))

    def make(index, ids, params):
        def stream():
            handle = engine.submit(ids, params)
            try:
                yield from handle
            finally:
                if not handle.finished.is_set():
                    handle.cancel()
            results[index] = handle.result
        return stream

    return prompts, jobs, [Run(index, make(index, ids, p)) for index, ids, p in jobs], results


def _logprobs(tok, prompt_ids: list[int], result, echo: bool) -> dict:
    tokens, token_lps, tops = [], [], []

    def text(t: int) -> str:
        return tok.decode([t], skip_special_tokens=False)

    if echo:
        entries = getattr(result, "prompt_logprobs", None) or [None] * len(prompt_ids)
        for t, e in zip(prompt_ids, entries):
            tokens.append(text(t))
            token_lps.append(None if e is None else e.logprob)
            tops.append(None if e is None else {text(a): lp for a, lp in e.top})
    generated = list(getattr(result, "logprobs", None) or [])
    stop = getattr(result, "stop_logprob", None)
    if echo and stop is not None:
        # With echo the stop token's entry is kept, as vLLM keeps it: lm-eval sums token_logprobs[ctxlen:-1],
        # taking the last entry for the generated token; without it a one-token continuation would sum to 0.
        generated.append(stop)
    for e in generated:
        tokens.append(text(e.token_id))
        token_lps.append(e.logprob)
        tops.append({text(a): lp for a, lp in e.top})
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


async def complete(server, req: CompletionRequest, box: dict | None = None) -> dict:
    prompts, jobs, runs, results = _runs(server, req)
    tok = server.base.generator.loaded.tokenizer
    started = time.monotonic()
    async for _ in run_all(runs, started + server.config.request_timeout_s, threading.Event()):
        pass
    error = client_error(runs, "prompt")
    if error is not None:
        raise error
    choices, completion_tokens = [], 0
    for (index, ids, _), run in zip(jobs, runs):
        result = results.get(index)
        prefix = tok.decode(ids, skip_special_tokens=False) if req.echo else ""
        choice = {"index": index, "text": prefix + result.text, "logprobs": None,
                  "finish_reason": "length" if run.timed_out else result.finish_reason}
        if req.logprobs is not None:
            choice["logprobs"] = _logprobs(tok, ids, result, req.echo)
        completion_tokens += len(result.token_ids)
        choices.append(choice)
        server.metrics.observe_tokens(None if run.first_at is None else run.first_at - started, run.times)
    usage = _usage(prompts, completion_tokens)
    server._count(usage, box)
    return {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": server.model_name,
            "choices": choices, "usage": usage}


def _usage(prompts, completion_tokens: int) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def stream_completion(server, req: CompletionRequest, box: dict | None = None):
    prompts, jobs, runs, results = _runs(server, req)  # errors here come before the first byte
    return _chunks(server, req, prompts, jobs, runs, results, box)


async def _chunks(server, req, prompts, jobs, runs, results, box):
    tok = server.base.generator.loaded.tokenizer
    cid, created, started = new_id("cmpl"), now(), time.monotonic()

    def chunk(choices: list, **extra) -> str:
        body = {"id": cid, "object": "text_completion", "created": created, "model": server.model_name,
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    if req.echo:
        for index, ids, _ in jobs:
            yield chunk([{"index": index, "text": tok.decode(ids, skip_special_tokens=False), "logprobs": None,
                          "finish_reason": None}])
    async for index, delta in run_all(runs, started + server.config.request_timeout_s, threading.Event()):
        yield chunk([{"index": index, "text": delta, "logprobs": None, "finish_reason": None}])
    error = client_error(runs, "prompt")
    if error is not None:
        yield f"data: {json.dumps(error.body())}\n\n"
    completion_tokens = 0
    for (index, ids, _), run in zip(jobs, runs):
        result = results.get(index)
        if result is None:
            continue
        completion_tokens += len(result.token_ids)
        server.metrics.observe_tokens(None if run.first_at is None else run.first_at - started, run.times)
        yield chunk([{"index": index, "text": "", "logprobs": None,
                      "finish_reason": "length" if run.timed_out else result.finish_reason}])
    usage = _usage(prompts, completion_tokens)
    server._count(usage, box)
    if req.stream_options is not None and req.stream_options.include_usage:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"
