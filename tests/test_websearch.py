"""Web search against a real local HTTP server on 127.0.0.1 that speaks SearXNG's JSON format."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from mosslm import protocol
from mosslm.plugins import websearch
from mosslm.plugins.registry import BUILTINS, run_commands


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query).get("q", [""])[0]
        if url.path == "/redirect/search":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if query == "slow":
            time.sleep(1.5)
        if query == "malformed":
            body = b'{"results": [ {"title": '
        elif query == "huge":
            body = b'{"results": [' + b'{"title": "x", "content": "' + b"a" * (websearch.MAX_BYTES + 10) + b'"}]}'
        else:
            body = json.dumps({"query": query, "results": [
                {"title": f"Result {i}", "url": f"https://example.org/{i}", "content": f"About {query}: fact {i}."}
                for i in range(1, 6)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout or size cap): that is the point of those tests


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_searxng_results_are_capped(server):
    hits = websearch.searxng(server, "长城")
    assert [h.title for h in hits] == ["Result 1", "Result 2", "Result 3"]
    assert hits[0].snippet == "About 长城: fact 1." and hits[0].url == "https://example.org/1"


@pytest.mark.parametrize("query, needle", [("malformed", "not JSON"), ("huge", "larger than")])
def test_bad_answers_raise_clear_errors(server, query, needle):
    with pytest.raises(websearch.WebSearchError, match=needle):
        websearch.searxng(server, query)


def test_slow_server_times_out(server):
    start = time.time()
    with pytest.raises(websearch.WebSearchError, match="failed"):
        websearch.searxng(server, "slow", timeout=0.3)
    assert time.time() - start < 1.2


def test_redirects_to_other_schemes_are_refused(server):
    with pytest.raises(websearch.WebSearchError, match="(?i)redirect"):
        websearch.searxng(server + "/redirect", "x")
    with pytest.raises(websearch.WebSearchError, match="http"):
        websearch.searxng("file:///etc", "x")


def test_search_plugin_turn_completes_whatever_the_server_does(server, monkeypatch):
    monkeypatch.setenv("MOSSLM_SEARXNG_URL", server)
    monkeypatch.setattr(websearch, "TIMEOUT", 0.5)
    commands = [protocol.Command("Search", q) for q in ("长城", "malformed", "huge", "slow")]
    results = run_commands(commands, BUILTINS)
    assert results.startswith('Search("长城") =>\n<|1|>: "About 长城: fact 1."\n<|2|>: "About 长城: fact 2."\n'
                              '<|3|>: "About 长城: fact 3."\n')
    for q in ("malformed", "huge", "slow"):
        assert f'Search("{q}") =>\nNo result.\n' in results
