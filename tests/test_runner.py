"""The engine's own decoder (mosslm/engine/runner.py) against transformers' forward on the same modules:
the same greedy tokens and log-probs, for Llama and Qwen2 (q/k/v biases) with grouped-query attention,
prefill and batched decode; quantized q/k/v and gate/up joined into one kernel call without a second copy;
models it does not cover run transformers' decoder."""

import pytest
import torch

from mosslm import model as modellib
from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig
from mosslm.engine.runner import DecoderRunner, join_linears, unsupported_reason
from mosslm.quant import QuantLinear, quantize

PROMPTS = ["你好！What is 12 times 7?", "Tell me about the Yangtze.", "1+1="]


def generate_all(model, tokenizer, own: bool, n: int = 24):
    engine = Engine(model, tokenizer, EngineConfig(max_running=4, kv_budget_mb=8, max_seq_len=128, own_decoder=own))
    try:
        assert (engine.runner is not None) == own, engine.runner_note
        params = SamplingParams(max_new_tokens=n, temperature=0.0, logprobs=0)
        handles = [engine.submit(tokenizer.encode(p, add_special_tokens=False), params) for p in PROMPTS]
        results = [h.wait(60) for h in handles]  # submitted together: batched prefill and decode
    finally:
        engine.shutdown()
    return [r.token_ids for r in results], [[lp.logprob for lp in r.logprobs] for r in results]


def qwen2_model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # biases are zero at init; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_own_decoder_gives_transformers_tokens_and_logprobs(arch, tiny_tokenizer):
    model = (modellib.build_model("micro", tiny_tokenizer, seed=4).eval() if arch == "llama"
             else qwen2_model(tiny_tokenizer))
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the GQA paths run
    assert unsupported_reason(model, 128) is None
    theirs, their_lp = generate_all(model, tiny_tokenizer, own=False)
    ours, our_lp = generate_all(model, tiny_tokenizer, own=True)
    assert ours == theirs and all(len(t) == 24 for t in ours)
    for a, b in zip(our_lp, their_lp):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


@pytest.mark.parametrize("bits,kernel", [(8, "int8pack"), (8, "q8own"), (4, "int4pack"), (4, "q4own")])
def test_quantized_projections_are_joined_into_one_call_without_a_second_copy(bits, kernel, tiny_tokenizer, tmp_path,
                                                                              monkeypatch):
    from mosslm.quant import q4_kernel

    ours = kernel in ("q4own", "q8own")
    if ours and q4_kernel.unavailable_reason():
        pytest.skip(f"mosslm's kernels cannot run here: {q4_kernel.unavailable_reason()}")
    monkeypatch.setenv("MOSSLM_Q4_KERNEL", "1" if ours else "0")
    q4_kernel.reset()
    try:
        check_joined_projections(bits, kernel, tiny_tokenizer, tmp_path)
    finally:
        q4_kernel.reset()  # the next load() decides again, with the environment restored


def check_joined_projections(bits, kernel, tiny_tokenizer, tmp_path):
    source = tmp_path / "fp"
    # head_dim 32: k and v have 64 rows, the int4 kernel's packing block
    modellib.save_checkpoint(modellib.build_model("micro", tiny_tokenizer, seed=6, hidden_size=128), tiny_tokenizer,
                             source)
    # torch's int8 kernel takes one scale per output row (group size 0); mosslm's runs the default groups
    quantize(str(source), str(tmp_path / "q"), bits, group_size=32 if bits == 4 else (0 if kernel == "int8pack" else None))
    model = modellib.load(tmp_path / "q").model
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj._kernel == kernel
    parts = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]
    x = torch.randn(3, model.config.hidden_size)
    separate = torch.cat([p(x) for p in parts], dim=-1)
    runner = DecoderRunner(model)
    assert runner.fused == 2 * model.config.num_hidden_layers
    joined = runner.layers[0].qkv
    assert isinstance(joined, QuantLinear) and joined.out_features == sum(p.out_features for p in parts)
    assert torch.equal(joined(x), separate) and torch.equal(torch.cat([p(x) for p in parts], dim=-1), separate)
    values = {"int4pack": "_packed", "q8own": "_q8u"}.get(kernel, "qweight")
    whole = getattr(joined, values)
    start, end = whole.data_ptr(), whole.data_ptr() + whole.numel() * whole.element_size()
    for p in parts:  # the parts now read their rows of the joined weights
        mine = getattr(p, values)
        assert start <= mine.data_ptr() < end
    theirs, _ = generate_all(model, tiny_tokenizer, own=False)
    ours, _ = generate_all(model, tiny_tokenizer, own=True)
    assert ours == theirs


def test_layers_of_other_kinds_are_not_joined():
    dense = [torch.nn.Linear(64, 32), torch.nn.Linear(64, 16)]
    assert join_linears(dense) is None
    q8 = QuantLinear.from_linear(torch.nn.Linear(64, 32), 8)
    q4 = QuantLinear.from_linear(torch.nn.Linear(64, 32), 4, 32)
    q8.prepare(), q4.prepare()
    assert join_linears([q8, q4]) is None


def test_a_model_outside_the_runner_runs_transformers_decoder(tiny_tokenizer):
    model = modellib.build_model("micro", tiny_tokenizer, seed=4, hidden_act="gelu").eval()
    reason = unsupported_reason(model, 128)
    assert reason and "gelu" in reason
    engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=2, kv_budget_mb=8, max_seq_len=128))
    try:
        assert engine.runner is None and "gelu" in engine.runner_note
        out = engine.submit(tiny_tokenizer.encode("1+1=", add_special_tokens=False),
                            SamplingParams(max_new_tokens=8, temperature=0.0)).wait(60)
    finally:
        engine.shutdown()
    assert len(out.token_ids) == 8
