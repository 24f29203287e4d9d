"""Typed request bodies: validated here, and described truthfully at /openapi.json.

Unknown fields are tolerated (clients send many); `top_k` and
`repetition_penalty`, which OpenAI lacks, are used. Limits that depend on the
server's configuration (the per-request token cap) are checked in the handlers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

MAX_N = 8
MAX_STOP = 4


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    moss: dict[str, Any] | None = Field(None, description="mosslm extension: the exact MOSS fields of a plugin turn")


class StreamOptions(_Open):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Open):
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Open):
    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=0, le=100_000)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return stop


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]] = Field(..., description="text, texts, token ids or lists of token ids")
    max_tokens: StrictInt = Field(16, ge=1)
    echo: StrictBool = False
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    suffix: str | None = None


def describe(error: ValidationError) -> tuple[str, str | None]:
    """A short message and the offending parameter for the first validation error."""
    first = error.errors()[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"{param + ': ' if param else ''}{first.get('msg', 'invalid value')}{more}", param
