"""The tokenizer over HTTP: GET /tokenizer_info, POST /tokenize and /detokenize (also under /v1/).

lm-evaluation-harness's `local-completions` model probes these with `tokenizer_backend=auto`, so that it
splits context and continuation with the server's own tokenizer; they take the same key as the API.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from .errors import bad_request

MAX_TOKENS = 1_000_000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    add_special_tokens: StrictBool = True
    model: str | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tokens: list[StrictInt] = Field(..., max_length=MAX_TOKENS)
    model: str | None = None


def add_tokenizer_routes(app: FastAPI, server) -> None:
    def tokenizer(request: Request, model: str | None = None):
        server.check_model(model)
        key = server.admit(request.headers.get("authorization"))
        server.release(key, 0)
        return server.base.generator.loaded.tokenizer

    def info(request: Request):
        tok = tokenizer(request)
        return {"model": server.model_name, "tokenizer_class": type(tok).__name__,
                "vocab_size": len(tok), "model_max_length": server.base.generator.context_length,
                "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
                "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
                "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
                "chat_template": getattr(tok, "chat_template", None)}

    def tokenize(body: TokenizeRequest, request: Request):
        tok = tokenizer(request, body.model)
        ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        return {"tokens": ids, "count": len(ids), "max_model_len": server.base.generator.context_length}

    def detokenize(body: DetokenizeRequest, request: Request):
        tok = tokenizer(request, body.model)
        vocab = len(tok)
        if any(not 0 <= t < vocab for t in body.tokens):
            raise bad_request(f"token ids must be in [0, {vocab})", "tokens")
        return {"prompt": tok.decode(body.tokens)}

    for prefix in ("", "/v1"):
        app.add_api_route(f"{prefix}/tokenizer_info", info, methods=["GET"])
        app.add_api_route(f"{prefix}/tokenize", tokenize, methods=["POST"])
        app.add_api_route(f"{prefix}/detokenize", detokenize, methods=["POST"])
