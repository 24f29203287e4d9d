"""Web search backends for the Search plugin: a SearXNG instance or the Serper API.

Configured by environment (or the server's config later):
  MOSSLM_SEARXNG_URL   base URL of a SearXNG instance with the JSON format enabled
  MOSSLM_SERPER_KEY    an API key for Serper (google.serper.dev)
Every request has a timeout, a response-size cap and a result cap, and
redirects are followed only to http(s) URLs.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass

MAX_BYTES = 2_000_000
MAX_RESULTS = 3
TIMEOUT = 8.0


class WebSearchError(RuntimeError):
    pass


@dataclass
class WebHit:
    title: str
    url: str
    snippet: str


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise WebSearchError(f"refused a redirect to {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def _fetch_json(request: urllib.request.Request, timeout: float) -> object:
    if urllib.parse.urlparse(request.full_url).scheme not in ("http", "https"):
        raise WebSearchError(f"only http(s) URLs are allowed: {request.full_url}")
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except OSError as e:  # URLError, timeouts, connection resets
        raise WebSearchError(f"search request failed: {e}") from None
    if len(body) > MAX_BYTES:
        raise WebSearchError(f"search response larger than {MAX_BYTES} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WebSearchError(f"search response is not JSON: {e}") from None


def searxng(base_url: str, query: str, k: int = MAX_RESULTS, timeout: float | None = None) -> list[WebHit]:
    url = base_url.rstrip("/") + "/search?" + urllib.parse.urlencode({"q": query, "format": "json"})
    data = _fetch_json(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout or TIMEOUT)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise WebSearchError("SearXNG answer has no 'results' list")
    return _hits(results, "title", "url", "content", k)


def serper(api_key: str, query: str, k: int = MAX_RESULTS, timeout: float | None = None,
           endpoint: str = "https://google.serper.dev/search") -> list[WebHit]:
    request = urllib.request.Request(endpoint, data=json.dumps({"q": query, "num": k}).encode(), method="POST",
                                     headers={"X-API-KEY": api_key, "Content-Type": "application/json"})
    data = _fetch_json(request, timeout or TIMEOUT)
    results = data.get("organic") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise WebSearchError("Serper answer has no 'organic' list")
    return _hits(results, "title", "link", "snippet", k)


def _hits(results: list, title_key: str, url_key: str, text_key: str, k: int) -> list[WebHit]:
    hits = []
    for r in results:
        if isinstance(r, dict) and isinstance(r.get(text_key), str) and r[text_key].strip():
            hits.append(WebHit(str(r.get(title_key, ""))[:200], str(r.get(url_key, ""))[:500],
                               " ".join(r[text_key].split())[:400]))
        if len(hits) == k:
            break
    return hits


def configured_backend() -> str | None:
    if os.environ.get("MOSSLM_SEARXNG_URL"):
        return "searxng"
    if os.environ.get("MOSSLM_SERPER_KEY"):
        return "serper"
    return None


def web_search(query: str) -> list[WebHit]:
    backend = configured_backend()
    if backend == "searxng":
        return searxng(os.environ["MOSSLM_SEARXNG_URL"], query)
    if backend == "serper":
        return serper(os.environ["MOSSLM_SERPER_KEY"], query)
    raise WebSearchError("no web search backend: set MOSSLM_SEARXNG_URL or MOSSLM_SERPER_KEY")
