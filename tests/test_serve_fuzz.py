"""Fuzzing the real HTTP server: whatever a client sends, never a 500, and the server stays up."""

import json
import urllib.error
import urllib.request

import pytest
from conftest import serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosslm.agent import Agent, ModelGenerator
from mosslm.engine import SamplingParams
from mosslm.engine.engine import EngineConfig
from mosslm.model import load
from mosslm.serve.app import Server, ServerConfig, create_app

ROUTES = ["/v1/chat/completions", "/v1/completions"]


@pytest.fixture(scope="module")
def url(tiny_checkpoint):
    gen = ModelGenerator(load(tiny_checkpoint), EngineConfig(max_running=4, max_waiting=8, kv_budget_mb=32))
    agent = Agent(gen, speaks_moss=True, preset="mosslm", params=SamplingParams(max_new_tokens=4, temperature=0.0))
    server = Server(agent, "tiny", ServerConfig(max_body_bytes=64 << 10, max_tokens_cap=64, request_timeout_s=20))
    with serving(create_app(server)) as url:
        yield url
    gen.engine.shutdown()


def send(url: str, route: str, data: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url + route, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50),
                    st.sampled_from(["", "user", "assistant", "system", "tool", "长" * 3000, "<eom>", "\x00"]))


def containers(inner):
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4))


values = st.recursive(scalars, containers, max_leaves=12)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "bot", 3])},
                                optional={"content": values, "tool_calls": values, "name": values, "moss": values})
FIELDS = ["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop",
          "stream", "stream_options", "logprobs", "top_logprobs", "echo", "tools", "tool_choice",
          "response_format", "repetition_penalty", "max_completion_tokens", "unknown_extra"]
bodies = st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, st.lists(message, max_size=3)), max_size=8)


def check(status: int, payload: bytes) -> None:
    assert status < 500 or status == 503, (status, payload[:300])
    if status >= 400:
        error = json.loads(payload)["error"]
        assert set(error) == {"message", "type", "param", "code"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, route=st.sampled_from(ROUTES))
def test_random_bodies_never_get_a_500(url, body, route):
    data = json.dumps(body, allow_nan=True).encode()
    check(*send(url, route, data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), route=st.sampled_from(ROUTES))
def test_random_bytes_never_get_a_500(url, raw, route):
    check(*send(url, route, raw))


def test_edge_cases_as_clients_send_them(url):
    user = {"role": "user", "content": "hi"}
    cases = [
        b"", b"null", b"[]", b'"text"', b"{", b'{"messages": [' + b"\xff\xfe" + b"]}",
        json.dumps({"messages": [user], "seed": "abc"}).encode(),
        json.dumps({"messages": [user], "max_tokens": -5}).encode(),
        json.dumps({"messages": [user], "max_tokens": 10**30}).encode(),
        json.dumps({"messages": [user], "temperature": float("nan")}).encode(),
        json.dumps({"messages": [user], "n": 0}).encode(),
        json.dumps({"messages": [user], "stop": ["a"] * 10}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "x" * 60000}]}).encode(),
        json.dumps({"messages": [user], "pad": "y" * (70 << 10)}).encode(),  # over the body limit: 413
        json.dumps({"prompt": [[10**9]]}).encode(),
        json.dumps({"prompt": []}).encode(),
        json.dumps({"prompt": "hi", "logprobs": 99}).encode(),
        json.dumps({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {
            "schema": {"type": "nonsense"}}}}).encode(),
    ]
    statuses = []
    for raw in cases:
        for route in ROUTES:
            status, payload = send(url, route, raw)
            check(status, payload)
            statuses.append(status)
    assert 413 in statuses and 400 in statuses
    status, _ = send(url, "/v1/chat/completions", b"hello", content_type="text/plain")
    assert 400 <= status < 500
    with urllib.request.urlopen(url + "/health", timeout=10) as r:  # still up
        assert r.status == 200
    status, payload = send(url, "/v1/chat/completions", json.dumps({"messages": [user]}).encode())
    assert status == 200, payload
