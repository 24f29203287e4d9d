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

from .http import HttpError as WebSearchError
from .http import fetch_json

MAX_BYTES = 2_000_000
MAX_RESULTS = 3
TIMEOUT = 8.0




@dataclass
class WebHit:
    title: str
    url: str
    snippet: str


def searxng(base_url: str, query: str, k: int = MAX_RESULTS, timeout: float | None = None) -> list[WebHit]:
    url = base_url.rstrip("/") + "/search?" + urllib.parse.urlencode({"q": query, "format": "json"})
    data = fetch_json(urllib.request.Request(url, headers={"Accept": "application/json"}), timeout or TIMEOUT, MAX_BYTES)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise WebSearchError("SearXNG answer has no 'results' list")
    return _hits(results, "title", "url", "content", k)


def serper(api_key: str, query: str, k: int = MAX_RESULTS, timeout: float | None = None,
           endpoint: str = "https://google.serper.dev/search") -> list[WebHit]:
    request = urllib.request.Request(endpoint, data=json.dumps({"q": query, "num": k}).encode(), method="POST",
                                     headers={"X-API-KEY": api_key, "Content-Type": "application/json"})
    data = fetch_json(request, timeout or TIMEOUT, MAX_BYTES)
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
