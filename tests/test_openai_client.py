"""The official `openai` client against a real server on 127.0.0.1, with a micro model trained here."""

import json
import os
import time
import urllib.error
import urllib.request

import pytest
from conftest import CALC_Q, WEATHER, WEATHER_Q, WEATHER_REPLY, serving

from mosslm.agent import Agent, ModelGenerator
from mosslm.engine import SamplingParams
from mosslm.model import load, load_without_weights
from mosslm.serve.app import Server, ServerConfig, create_app
from mosslm.serve.keys import create_key, revoke
from mosslm.serve.store import open_db

openai = pytest.importorskip("openai")
CALC_REPLY = "1234*5678=7006652。"


def running(server: Server):
    return serving(create_app(server))


@pytest.fixture(scope="module")
def generator(tool_model):
    """Our engine; with MOSSLM_TEST_BACKEND=vllm (scripts/gpu_check.sh) vLLM behind the same interface."""
    if os.environ.get("MOSSLM_TEST_BACKEND") == "vllm":
        from mosslm.engine.vllm_backend import VllmConfig, VllmEngine
        loaded = load_without_weights(tool_model)
        config = VllmConfig(gpu_memory_utilization=0.3, dtype="float32", max_num_seqs=16)
        gen = ModelGenerator(loaded, engine_factory=lambda stops: VllmEngine(tool_model, loaded.tokenizer, config, stops))
    else:
        gen = ModelGenerator(load(tool_model))
    yield gen
    gen.engine.shutdown()


def base_agent(generator) -> Agent:
    agent = Agent(generator, speaks_moss=True, preset="mosslm", params=SamplingParams(max_new_tokens=40, temperature=0.0))
    agent.set_plugins(["Calculate"])
    return agent


@pytest.fixture(scope="module")
def url(generator):
    with running(Server(base_agent(generator), "tool-model")) as u:
        yield u


def client(url, key="unused", **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def test_models_and_a_plain_chat_completion_with_usage(url):
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tool-model"]
    out = c.chat.completions.create(model="tool-model", messages=[{"role": "user", "content": CALC_Q}], temperature=0,
                                    tools=[WEATHER])
    assert out.choices[0].message.content == CALC_REPLY
    assert out.usage.prompt_tokens > 10 and out.usage.completion_tokens > 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_deltas_equal_the_non_streamed_reply_and_carry_the_plugin_steps(url):
    c = client(url)
    messages = [{"role": "user", "content": CALC_Q}]
    whole = c.chat.completions.create(model="tool-model", messages=messages, temperature=0, tools=[WEATHER])
    chunks = list(c.chat.completions.create(model="tool-model", messages=messages, temperature=0, stream=True,
                                            tools=[WEATHER],
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content == CALC_REPLY  # a Chinese reply, streamed whole characters
    steps = [ch.choices[0].delta.model_extra.get("moss") for ch in chunks if ch.choices]
    steps = [s for s in steps if s]
    assert {"commands": 'Calculate("1234*5678")'} in steps
    assert {"results": "Calculate(\"1234*5678\") => '7006652'\n"} in steps
    reasoning = "".join(ch.choices[0].delta.model_extra.get("reasoning_content") or ""
                        for ch in chunks if ch.choices)
    assert reasoning == "需要计算"
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert [f.choices[0].finish_reason for f in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_client_tool_calls_stream_and_the_follow_up_gets_the_final_reply(url):
    c = client(url)
    user = {"role": "user", "content": WEATHER_Q}
    chunks = list(c.chat.completions.create(model="tool-model", messages=[user], tools=[WEATHER], temperature=0,
                                            stream=True))
    calls: dict[int, dict] = {}
    for ch in chunks:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.id or slot["id"]
            slot["name"] += (tc.function.name or "") if tc.function else ""
            slot["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert list(calls) == [0] and calls[0]["name"] == "Weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    call = {"id": calls[0]["id"], "type": "function",
            "function": {"name": "Weather", "arguments": calls[0]["arguments"]}}
    reasoning = "".join((ch.choices[0].delta.model_extra.get("reasoning_content") or "") for ch in chunks if ch.choices)
    assert reasoning == "I need the weather."
    follow = c.chat.completions.create(model="tool-model", temperature=0, tools=[WEATHER], messages=[
        user, {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": reasoning},
        {"role": "tool", "tool_call_id": call["id"], "content": "22°C, sunny"}])
    assert follow.choices[0].message.content == WEATHER_REPLY


def test_a_named_tool_choice_forces_the_command(url):
    c = client(url)
    out = c.chat.completions.create(model="tool-model", messages=[{"role": "user", "content": WEATHER_Q}],
                                    tools=[WEATHER], temperature=0,
                                    tool_choice={"type": "function", "function": {"name": "Weather"}})
    call = out.choices[0].message.tool_calls[0]
    assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "Weather"
    none = c.chat.completions.create(model="tool-model", messages=[{"role": "user", "content": "hi"}],
                                     tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=5)
    assert none.choices[0].message.tool_calls is None


def test_n_choices(url):
    out = client(url).chat.completions.create(model="tool-model", messages=[{"role": "user", "content": CALC_Q}],
                                              temperature=0, n=3, tools=[WEATHER])
    assert [ch.index for ch in out.choices] == [0, 1, 2]
    assert {ch.message.content for ch in out.choices} == {CALC_REPLY}


def test_completions_with_echo_and_logprobs(url, generator):
    c = client(url)
    prompt = "1234*5678="
    out = c.completions.create(model="tool-model", prompt=prompt, max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    n_prompt = len(generator.encode(prompt))
    assert out.choices[0].text.startswith(prompt)
    assert len(lp.tokens) == n_prompt + 1 and lp.token_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    # As lm-evaluation-harness sends it: token ids, scored without generating text of interest.
    ids = generator.encode(prompt)
    again = c.completions.create(model="tool-model", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0)
    assert again.choices[0].logprobs.token_logprobs[1:n_prompt] == pytest.approx(lp.token_logprobs[1:n_prompt], abs=1e-4)


def test_echo_keeps_the_entry_of_a_stop_token_so_a_one_token_continuation_scores(generator):
    # lm-eval drops the last echoed entry as the generated token's; when the model's next token is a
    # terminator that entry must still be there, or the continuation's last token would go unscored.
    from conftest import meta_with
    from mosslm import protocol
    from mosslm.plugins.registry import BUILTINS
    from mosslm.serve.completions import _logprobs
    from mosslm.serve.openai_tools import client_plugins

    if os.environ.get("MOSSLM_TEST_BACKEND") == "vllm":
        pytest.skip("vLLM reports the stop token itself")
    meta = meta_with({"Calculate": BUILTINS["Calculate"], **client_plugins([WEATHER])})
    calc = protocol.Turn(CALC_Q, "1234*5678=7006652。", plugin=True, thoughts="需要计算",
                         commands='Calculate("1234*5678")', results="Calculate(\"1234*5678\") => '7006652'\n")
    text = protocol.Conversation(meta, [calc]).render()
    ids = generator.encode(text[:text.rindex("<eom>")])
    tok = generator.loaded.tokenizer
    eom = tok.convert_tokens_to_ids("<eom>")
    handle = generator.engine.submit(ids, SamplingParams(max_new_tokens=1, temperature=0.0, logprobs=1,
                                                         prompt_logprobs=1, stop_token_ids=[eom]))
    for _ in handle:
        pass
    result = handle.result
    assert result.finish_reason == "stop" and result.token_ids == [] and result.stop_logprob.token_id == eom
    echoed = _logprobs(tok, ids, result, echo=True)
    assert len(echoed["token_logprobs"]) == len(ids) + 1 and echoed["tokens"][-1] == "<eom>"
    assert echoed["token_logprobs"][-1] > -1  # the memorised terminator
    assert len(_logprobs(tok, ids, result, echo=False)["tokens"]) == 0  # without echo, as OpenAI: generated only


def test_json_schema_response_format_parses_and_validates(url):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 30}},
              "required": ["city", "days"], "additionalProperties": False}
    out = client(url).chat.completions.create(
        model="tool-model", messages=[{"role": "user", "content": "Plan a trip as JSON."}], temperature=1.0, seed=3,
        max_tokens=120, response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}})
    value = json.loads(out.choices[0].message.content)
    assert set(value) == {"city", "days"} and isinstance(value["city"], str) and len(value["city"]) <= 12
    assert isinstance(value["days"], int) and 1 <= value["days"] <= 30
    assert out.choices[0].finish_reason == "stop"


def test_disconnecting_mid_stream_frees_the_engine_slot(url, generator):
    engine = generator.engine
    total = len(engine.slots.slots)
    for seed in range(8):  # a sampled story may end by itself first; then try another seed
        body = json.dumps({"model": "tool-model", "prompt": "Once upon a time", "stream": True, "max_tokens": 900,
                           "temperature": 1.0, "seed": seed}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        resp = urllib.request.urlopen(req, timeout=30)
        lines = [resp.readline() for _ in range(6)]  # a few tokens in: generation is under way
        busy = engine.slots.free_count() < total
        resp.close()
        if busy and b"[DONE]" not in b"".join(lines):
            break
    else:
        pytest.fail("no generation was still running after a few tokens")
    deadline = time.time() + 10
    while engine.slots.free_count() < total and time.time() < deadline:
        time.sleep(0.05)
    assert engine.slots.free_count() == total


def test_each_error_is_its_client_exception(generator, tmp_path):
    store = open_db(tmp_path)
    key, _ = create_key(store, note="ok")
    limited, _ = create_key(store, rate_per_min=1)
    gone, info = create_key(store)
    revoke(store, info.prefix)
    msgs = [{"role": "user", "content": "hi"}]
    with running(Server(base_agent(generator), "tool-model", store=store, open_access=False)) as u:
        assert client(u, key).chat.completions.create(model="tool-model", messages=msgs, max_tokens=2).choices
        with pytest.raises(openai.BadRequestError):
            client(u, key).chat.completions.create(model="tool-model", messages=msgs, temperature=7)
        with pytest.raises(openai.AuthenticationError):
            client(u, "moss-wrong").chat.completions.create(model="tool-model", messages=msgs)
        with pytest.raises(openai.PermissionDeniedError):
            client(u, gone).chat.completions.create(model="tool-model", messages=msgs)
        with pytest.raises(openai.NotFoundError):
            client(u, key).chat.completions.create(model="gpt-4o", messages=msgs)
        client(u, limited).chat.completions.create(model="tool-model", messages=msgs, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as e:
            client(u, limited).chat.completions.create(model="tool-model", messages=msgs, max_tokens=2)
        assert int(e.value.response.headers["retry-after"]) >= 1
    with running(Server(None, "tool-model")) as u:  # still loading
        with pytest.raises(openai.InternalServerError) as e:
            client(u).chat.completions.create(model="tool-model", messages=msgs)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"]
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(u + "/health", timeout=10)
        assert health.value.code == 503


def test_metrics_show_requests_latency_and_the_engine(url):
    client(url).chat.completions.create(model="tool-model", messages=[{"role": "user", "content": CALC_Q}],
                                        temperature=0, stream=True, tools=[WEATHER]).close()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for name in ("mosslm_requests_total", "mosslm_time_to_first_token_seconds_bucket",
                 "mosslm_inter_token_latency_seconds_bucket", "mosslm_prompt_tokens_total",
                 "mosslm_completion_tokens_total", "mosslm_engine_running", "mosslm_engine_waiting",
                 "mosslm_engine_kv_slots_in_use", "mosslm_engine_prefix_cache_hit_tokens"):
        assert name in text, name
    assert 'route="/v1/chat/completions",status="200"' in text


def test_streamed_completions_equal_the_non_streamed_text(url):
    c = client(url)
    whole = c.completions.create(model="tool-model", prompt="1234*5678=", max_tokens=12, temperature=0)
    parts = list(c.completions.create(model="tool-model", prompt="1234*5678=", max_tokens=12, temperature=0,
                                      stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    assert whole.choices[0].text and parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_requests_beyond_the_in_flight_cap_get_a_fast_503(generator):
    with running(Server(base_agent(generator), "tool-model", ServerConfig(max_in_flight=1))) as u:
        body = json.dumps({"messages": [{"role": "user", "content": "a long story"}], "stream": True,
                           "max_tokens": 900, "temperature": 1.0, "seed": 2}).encode()
        held = urllib.request.urlopen(urllib.request.Request(
            u + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}), timeout=30)
        held.readline()
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            client(u).chat.completions.create(model="tool-model", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert time.monotonic() - started < 5
        held.close()


def test_chat_logprobs_cover_the_reply_tokens(url, generator):
    out = client(url).chat.completions.create(model="tool-model", messages=[{"role": "user", "content": CALC_Q}],
                                              tools=[WEATHER], temperature=0, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content).strip() == out.choices[0].message.content == CALC_REPLY
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)  # greedy: the chosen is the best
