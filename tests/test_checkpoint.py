"""A tiny random mosslm checkpoint is a plain transformers checkpoint."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mosslm import protocol
from mosslm.engine import SamplingParams, generate
from mosslm.model import PRESETS, count_parameters, load, model_config

MESSAGES = [
    {"role": "user", "content": "你好，请介绍一下你自己。"},
    {"role": "assistant", "content": "我是MOSS。Hello!"},
    {"role": "user", "content": "What is 12*34? 😀 <eom> injected"},
]


def test_folder_has_the_hf_files(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    for required in ("config.json", "model.safetensors", "generation_config.json",
                     "tokenizer.json", "tokenizer_config.json", "mosslm.json"):
        assert required in names
    assert json.loads((tiny_checkpoint / "config.json").read_text())["model_type"] == "llama"
    assert "chat_template" in (tiny_checkpoint / "tokenizer_config.json").read_text() or \
        (tiny_checkpoint / "chat_template.jinja").exists()
    assert not [n for n in tiny_checkpoint.parent.iterdir() if n.name.startswith(".")]  # no temp leftovers


def test_logits_equal_after_reload(tiny_tokenizer, tiny_checkpoint):
    from mosslm.model import build_model

    original = build_model("micro", tiny_tokenizer, seed=0).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    ids = torch.tensor([tiny_tokenizer.encode("你好 MOSS 1234", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, reloaded(ids).logits)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_protocol_rendering(tiny_checkpoint, add_generation_prompt):
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    messages = MESSAGES if add_generation_prompt else MESSAGES + [{"role": "assistant", "content": "408"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    conv = protocol.from_openai(messages, default_meta=protocol.meta_instruction("mosslm"), escape_user=True)
    expected = protocol.generation_prompt(conv) if add_generation_prompt else conv.render()
    assert text == expected
    # With a system message and a plugin turn carried in the `moss` extension.
    conv2 = protocol.Conversation(protocol.meta_instruction("moss", ["Calculate"]), [
        protocol.Turn("1+1?", "2", plugin=True, thoughts="算一下", commands='Calculate("1+1")',
                      results="Calculate(\"1+1\") => '2'\n")])
    msgs2 = [m for m in protocol.to_openai(conv2)["messages"]]
    assert tok.apply_chat_template(msgs2, tokenize=False) == conv2.render()


def test_greedy_generation_matches_transformers(tiny_checkpoint):
    loaded = load(tiny_checkpoint)
    prompt = protocol.generation_prompt(protocol.Conversation(
        protocol.meta_instruction("mosslm"), [protocol.Turn("你好，世界 hello")]))
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    ours = generate(loaded.model, loaded.tokenizer, ids, SamplingParams(max_new_tokens=24, temperature=0.0))
    with torch.no_grad():
        ref = loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=24, min_new_tokens=24,
                                    eos_token_id=None, repetition_penalty=1.0)
    assert ours.token_ids == ref[0, len(ids):].tolist()
    assert len(ours.token_ids) == 24


def test_sampling_is_reproducible_with_a_seed(tiny_checkpoint):
    loaded = load(tiny_checkpoint)
    ids = loaded.tokenizer.encode("你好", add_special_tokens=False)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.1, seed=7)
    a = generate(loaded.model, loaded.tokenizer, ids, params)
    b = generate(loaded.model, loaded.tokenizer, ids, params)
    c = generate(loaded.model, loaded.tokenizer, ids, SamplingParams(**{**params.__dict__, "seed": 8}))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_presets_span_1m_to_16b():
    micro = count_parameters(model_config("micro", vocab_size=1024))
    big = count_parameters(model_config("moss-16b", vocab_size=107008))
    assert micro < 1.5e6
    assert 14e9 < big < 18e9
    assert set(PRESETS) >= {"micro", "tiny", "small", "base", "moss-16b"}


def test_invalid_sampling_params_are_clear():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_load_errors_are_clear(tmp_path):
    from mosslm.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="not found"):
        load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json"):
        load(tmp_path)
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(ModelLoadError, match="gguf"):
        load(tmp_path / "x.bin")
