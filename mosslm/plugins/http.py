"""Small, careful HTTP for tools: JSON only, timeouts, size caps, http(s) redirects only."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

MAX_BYTES = 2_000_000


class HttpError(RuntimeError):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise HttpError(f"refused a redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_json(request: urllib.request.Request, timeout: float, max_bytes: int = MAX_BYTES) -> object:
    if urllib.parse.urlparse(request.full_url).scheme not in ("http", "https"):
        raise HttpError(f"only http(s) URLs are allowed: {request.full_url}")
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
    except OSError as e:  # URLError, timeouts, connection resets
        raise HttpError(f"request failed: {e}") from None
    if len(body) > max_bytes:
        raise HttpError(f"response larger than {max_bytes} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HttpError(f"response is not JSON: {e}") from None


