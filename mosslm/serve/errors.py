"""The API's one error shape: `{"error": {"message", "type", "param", "code"}}`.

Status codes follow OpenAI's, so its clients raise the matching exception:
400 bad input, 401 missing or bad key, 403 revoked or expired key, 404 unknown
model or route, 413 oversized body or prompt, 429 rate limit and 503 overload
(both with `Retry-After`). Nothing a client sends may produce a 500.
"""

from __future__ import annotations

import math

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error",
          429: "rate_limit_error", 503: "overloaded_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(self.retry_after)))} if self.retry_after is not None else None
        return JSONResponse(self.body(), self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def overloaded(message: str, retry_after: float = 1.0) -> APIError:
    return APIError(503, message, None, "server_overloaded", retry_after)
