"""mosslm's int4 and int8 CPU kernels (mosslm/quant/csrc/q4_cpu.cpp) against references written here in
torch: the matmul equals int8-block activations times the dequantized weights, for every group size and the
odd shapes its tiles leave over; a whole decode step in C++ gives the engine the same tokens and log-probs as
the runner's Python layers on the same weights; MOSSLM_Q4_KERNEL=0 gives torch's kernels back."""

import pytest
import torch

from mosslm import model as modellib
from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig
from mosslm.quant import QuantLinear, q4_kernel, quantize
from mosslm.quant.linear import kernel_row_limit, unpack_nibbles

pytestmark = pytest.mark.skipif(q4_kernel.unavailable_reason() is not None,
                                reason=f"mosslm's int4 kernel cannot run here: {q4_kernel.unavailable_reason()}")


def emulated(portable: dict, group: int, x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes, in float64, from the layer's portable int4 buffers: x rounded to int8 per 32
    inputs (scale max|x| / 127), times the weights q * s + b with s and b = zero - 8 s rounded to fp16."""
    q = unpack_nibbles(portable["qweight"]).double()
    n, k = q.shape
    s = portable["scales"].float().half().double()
    b = (portable["zeros"].float() - 8 * portable["scales"].float()).half().double()
    w = (q.view(n, k // group, group) * s[..., None] + b[..., None]).view(n, k)
    return activations_int8(x) @ w.t()


def activations_int8(x: torch.Tensor) -> torch.Tensor:
    blocks = x.double().view(x.shape[0], -1, 32)  # a scale per 32 inputs, as llama.cpp's Q8 activations
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127
    return (torch.round((blocks / scale).float()).double() * scale).view(x.shape)


@pytest.mark.parametrize("k,group", [(576, 32), (576, 64), (1024, 128), (1024, 256), (64, 32)])
@pytest.mark.parametrize("rows", [1, 3, 6, 13])
def test_the_matmul_equals_int8_activations_times_the_dequantized_weights(k, group, rows):
    # 37 outputs: tiles of four and two output rows leave a remainder; 6 rows: a tile of four and two single rows;
    # 13 rows: AVX2's tiles of eight and four activation rows and a single one;
    # 576 inputs are nine blocks of 64, so the 512-bit loop leaves one for the 256-bit one
    torch.manual_seed(k + group + rows)
    layer = QuantLinear.from_linear(torch.nn.Linear(k, 37, bias=True), 4, group)
    portable = {name: t.clone() for name, t in layer.state_dict().items()}
    assert layer.prepare() == "q4own"
    x = torch.randn(rows, k) * torch.linspace(0.1, 3, k)  # blocks of different scales
    expected = emulated(portable, group, x) + layer.bias.double()
    got = layer(x).double()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("k,group", [(64, None), (576, None), (1536, None), (576, 64), (1536, 128), (1024, 256)])
@pytest.mark.parametrize("rows", [1, 6, 13])
def test_the_int8_matmul_equals_int8_activations_times_the_int8_weights(k, group, rows):
    torch.manual_seed(k + rows)
    layer = QuantLinear.from_linear(torch.nn.Linear(k, 37, bias=True), 8, group)
    assert layer.scales.shape == ((37, k // group) if group else (37,))
    assert layer.prepare() == "q8own" and layer.qweight.numel() == 0  # the unsigned copy replaces the signed one
    x = torch.randn(rows, k) * torch.linspace(0.1, 3, k)
    weight = layer.dequantized_weight().double()
    expected = activations_int8(x) @ weight.t() + layer.bias.double()
    assert torch.allclose(layer(x).double(), expected, rtol=1e-5, atol=1e-4 * expected.abs().max().item())
    many = torch.randn(kernel_row_limit() + 1, k)  # prefill-sized: blocks of exact values and a matmul
    assert torch.allclose(layer(many).double(), many.double() @ weight.t() + layer.bias.double(), atol=1e-3)


def test_the_matmul_is_close_to_the_plain_linear_and_many_rows_are_exact():
    torch.manual_seed(7)
    linear = torch.nn.Linear(576, 96, bias=False)
    layer = QuantLinear.from_linear(linear, 4, 32)
    exact = layer.dequantized_weight()
    layer.prepare()
    plain = layer.dequantized_weight()  # from the fp16 scales the kernel keeps: within their rounding
    assert torch.allclose(plain, exact, atol=2e-3 * exact.abs().max().item())  # as llama.cpp's Q4_1 rounds
    few, many = torch.randn(4, 576), torch.randn(kernel_row_limit() + 1, 576)
    reference = few @ plain.t()
    relative = ((layer(few) - reference).norm() / reference.norm()).item()
    assert relative < 0.01  # the int8 activations' rounding; llama.cpp's Q8 activations give the same
    # prefill-sized inputs convert blocks of weights to the activations' dtype and run a matmul
    assert torch.allclose(layer(many), many @ plain.t(), atol=1e-4)


def test_wrong_shapes_are_refused_with_a_message():
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 32), 4, 32)
    layer.prepare()
    kernel = q4_kernel.load()
    with pytest.raises(RuntimeError, match="input size 64"):
        kernel.q4_matmul(torch.randn(1, 64), layer.qweight, layer._q4_sb, 32)
    with pytest.raises(RuntimeError, match="fp16"):
        kernel.q4_matmul(torch.randn(1, 128), layer.qweight, layer._q4_sb.bfloat16(), 32)
    values = torch.zeros(8, 384, dtype=torch.uint8)  # int8 groups of 192 inputs: not 64 times a power of two
    with pytest.raises(RuntimeError, match="64 inputs times a power of two"):
        kernel.q4_matmul(torch.randn(1, 384), values, torch.ones(8, 2), 0)


def quantized_model(tokenizer, tmp_path, bits, **shape):
    source = tmp_path / "fp"
    model = modellib.build_model("micro", tokenizer, seed=8, hidden_size=128, intermediate_size=256, **shape)
    modellib.save_checkpoint(model, tokenizer, source)
    quantize(str(source), str(tmp_path / "q"), bits, group_size=32 if bits == 4 else None)
    return modellib.load(tmp_path / "q").model


def run_prompts(engine, tokenizer, prompts, n=24):
    params = SamplingParams(max_new_tokens=n, temperature=0.0, logprobs=0)
    handles = [engine.submit(tokenizer.encode(p, add_special_tokens=False), params) for p in prompts]
    results = [h.wait(60) for h in handles]
    return [r.token_ids for r in results], [[lp.logprob for lp in r.logprobs] for r in results]


@pytest.mark.parametrize("bits,dtype,kv", [(4, torch.float32, "auto"), (4, torch.float32, "model"),
                                           (4, torch.bfloat16, "auto"), (8, torch.float32, "auto")])
def test_a_decode_step_in_cpp_gives_the_tokens_of_the_python_layers(bits, dtype, kv, tiny_tokenizer, tmp_path):
    model = quantized_model(tiny_tokenizer, tmp_path, bits).to(dtype)
    prompts = ["你好！What is 12 times 7?", "Tell me about the Yangtze.", "1+1="]  # three lengths, batched
    config = EngineConfig(max_running=4, kv_budget_mb=8, max_seq_len=128, kv_dtype=kv)
    engine = Engine(model, tiny_tokenizer, config)
    try:
        assert engine.runner.q4_step is not None, engine.runner_note
        # auto: an fp16 cache under fp32 activations (half the reads), else the model's dtype
        expected = torch.float16 if kv == "auto" and dtype == torch.float32 else dtype
        assert engine.kv.k[0].dtype == expected
        ours, our_lp = run_prompts(engine, tiny_tokenizer, prompts)
    finally:
        engine.shutdown()
    assert_python_layers_agree(model, tiny_tokenizer, config, prompts, ours, our_lp, dtype)


def assert_python_layers_agree(model, tokenizer, config, prompts, ours, our_lp, dtype=torch.float32):
    engine = Engine(model, tokenizer, config)
    try:
        engine.runner.q4_step = None  # every step through the runner's Python layers, on the same kernels
        theirs, their_lp = run_prompts(engine, tokenizer, prompts)
    finally:
        engine.shutdown()
    assert ours == theirs and all(len(t) == 24 for t in ours)
    # fp32 throughout in C++; the Python layers keep the model's dtype between operations. Even in fp32 the
    # two sum in different orders (rms norm, attention), and a last-bit difference can move an activation
    # across an int8 rounding boundary: one step of 1/127 in one input, a few 1e-3 in a log-prob.
    tolerance = 1e-2 if dtype == torch.float32 else 0.1
    for a, b in zip(our_lp, their_lp):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=tolerance)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_query_heads_sharing_a_key_value_head_attend_as_in_the_python_layers(heads, kv_heads, tiny_tokenizer,
                                                                              tmp_path):
    # AVX2 takes a key/value head's query heads three at a time: 1 apiece, 3 + 1, and 3 + 3 + 2
    model = quantized_model(tiny_tokenizer, tmp_path, 4, num_attention_heads=heads, num_key_value_heads=kv_heads)
    prompts = ["你好！What is 12 times 7?", "Tell me about the Yangtze.", "1+1=", "Good morning"]
    config = EngineConfig(max_running=4, kv_budget_mb=8, max_seq_len=128)
    engine = Engine(model, tiny_tokenizer, config)
    try:
        assert engine.runner.q4_step is not None, engine.runner_note
        ours, our_lp = run_prompts(engine, tiny_tokenizer, prompts)
    finally:
        engine.shutdown()
    assert_python_layers_agree(model, tiny_tokenizer, config, prompts, ours, our_lp)


def test_the_environment_switch_gives_torchs_kernel_back(monkeypatch, tiny_tokenizer, tmp_path):
    monkeypatch.setenv("MOSSLM_Q4_KERNEL", "0")
    q4_kernel.reset()
    try:
        assert q4_kernel.load() is None and "MOSSLM_Q4_KERNEL=0" in q4_kernel.reason()
        assert QuantLinear.from_linear(torch.nn.Linear(128, 64), 4, 32).prepare() == "int4pack"
        assert QuantLinear.from_linear(torch.nn.Linear(128, 64), 8).prepare() == "int8pack"
    finally:
        monkeypatch.delenv("MOSSLM_Q4_KERNEL")
        q4_kernel.reset()
    assert q4_kernel.load() is not None and q4_kernel.reason() is None


def test_an_fp16_cache_gives_the_tokens_of_an_fp32_cache(tiny_tokenizer, tmp_path):
    model = quantized_model(tiny_tokenizer, tmp_path, 8)
    prompts = ["你好！What is 12 times 7?", "Tell me about the Yangtze."]
    results = {}
    for kv in ("fp16", "fp32"):
        engine = Engine(model, tiny_tokenizer, EngineConfig(max_running=4, kv_budget_mb=8, max_seq_len=128,
                                                            kv_dtype=kv))
        try:
            assert engine.kv.k[0].dtype == {"fp16": torch.float16, "fp32": torch.float32}[kv]
            results[kv] = run_prompts(engine, tiny_tokenizer, prompts)
        finally:
            engine.shutdown()
    assert results["fp16"][0] == results["fp32"][0]
    for a, b in zip(results["fp16"][1], results["fp32"][1]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-2)
