"""JSON-constrained decoding: even a random model's sampled replies parse and match the schema."""

import json
import sys
import time

import pytest
import torch

pytest.importorskip("xgrammar")

from mosslm.engine import SamplingParams, constrained
from mosslm.engine.constrained import JsonConstraint
from mosslm.engine.engine import Engine, EngineConfig
from mosslm.model import build_model

from conftest import memorize

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


def validate(value, schema=SCHEMA) -> None:
    try:
        import jsonschema
    except ImportError:  # by hand
        assert set(value) == set(schema["required"])
        assert isinstance(value["name"], str) and len(value["name"]) <= 6
        assert isinstance(value["age"], int) and 0 <= value["age"] <= 150
        assert value["color"] in ("red", "green", "blue")
        assert 1 <= len(value["tags"]) <= 3 and all(isinstance(t, str) and len(t) <= 4 for t in value["tags"])
    else:
        jsonschema.validate(value, schema)


@pytest.fixture(scope="module")
def random_model(tiny_tokenizer):
    model = build_model("micro", tiny_tokenizer, seed=2, max_position_embeddings=512).float().eval()
    assert model.config.vocab_size >= len(tiny_tokenizer)
    return model


def test_a_random_model_samples_valid_json_for_a_schema(random_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    engine = Engine(random_model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=512),
                    stop_token_ids=[eos])
    try:
        constraint = JsonConstraint.compile(tiny_tokenizer, SCHEMA)
        assert JsonConstraint.compile(tiny_tokenizer, json.loads(json.dumps(SCHEMA))) is constraint  # cached
        prompt = tiny_tokenizer.encode("请用JSON回答：", add_special_tokens=False)
        handles = [engine.submit(prompt, SamplingParams(max_new_tokens=300, temperature=1.0, top_p=1.0, top_k=0,
                                                        seed=seed, constraint=constraint, logprobs=0))
                   for seed in range(6)]
        texts = set()
        for h in handles:
            g = h.wait(120)
            assert g.finish_reason == "stop", g.text  # ended by the grammar, not by the token budget
            assert eos not in g.token_ids and len(g.logprobs) == len(g.token_ids)
            validate(json.loads(g.text))
            texts.add(g.text)
        assert len(texts) > 1  # really sampled
    finally:
        engine.shutdown()


def test_json_object_mode_gives_an_object(tiny_tokenizer):
    replies = ['{"city": "北京", "n": 3}', '{"ok": true, "items": [1, 2]}', '{"name": "MOSS"}']
    model = memorize(tiny_tokenizer, ["JSON:" + r for r in replies], steps=300)
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=16, max_seq_len=256),
                    stop_token_ids=[tiny_tokenizer.eos_token_id])
    try:
        constraint = JsonConstraint.compile(tiny_tokenizer, None)
        prompt = tiny_tokenizer.encode("JSON:", add_special_tokens=False)
        for seed in range(4):
            g = engine.generate(prompt, SamplingParams(max_new_tokens=100, temperature=1.0, seed=seed,
                                                       constraint=constraint))
            assert g.finish_reason == "stop" and isinstance(json.loads(g.text), dict), g.text
        free = engine.generate(prompt, SamplingParams(max_new_tokens=100, temperature=0.0))
        assert free.text.startswith("{")  # the model itself writes JSON
    finally:
        engine.shutdown()


def test_mask_follows_the_grammar_and_reports_completion(tiny_tokenizer):
    state = JsonConstraint.compile(tiny_tokenizer, None).new_state()
    big = len(tiny_tokenizer) + 70  # a model vocab padded past the tokenizer's
    mask = state.allowed_mask(big)
    assert mask.dtype == torch.bool and mask.shape == (big,) and not mask[len(tiny_tokenizer):].any()
    assert tiny_tokenizer.convert_ids_to_tokens(mask.nonzero().flatten().tolist()) == ["{"]
    ids = tiny_tokenizer.encode('{"a": [1, "x"]}', add_special_tokens=False)
    costs = []
    for token in ids:
        assert not state.done and state.allowed_mask(big)[token]
        t = time.perf_counter()
        state.advance(token)
        state.allowed_mask(big)
        costs.append(time.perf_counter() - t)
    assert state.done and not state.allowed_mask(big)[tiny_tokenizer.eos_token_id]
    print(f"\nmask cost per step (advance + mask over {big} tokens): "
          f"mean {1e6 * sum(costs) / len(costs):.0f} us, max {1e6 * max(costs):.0f} us")
    with pytest.raises(ValueError, match="does not continue"):
        state.advance(ids[0])


def test_bad_schemas_and_a_missing_library_get_clear_errors(tiny_tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="invalid JSON schema.*bogus"):
        JsonConstraint.compile(tiny_tokenizer, {"type": "bogus"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        JsonConstraint.compile(tiny_tokenizer, ["not", "a", "schema"])
    with pytest.raises(ValueError, match="constraint must be a compiled constraint"):
        SamplingParams(constraint={"type": "object"})
    monkeypatch.setattr(constrained, "_by_tokenizer", {})
    monkeypatch.setitem(sys.modules, "xgrammar", None)
    with pytest.raises(ImportError, match="pip install xgrammar"):
        JsonConstraint.compile(tiny_tokenizer, None)
