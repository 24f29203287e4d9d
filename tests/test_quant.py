"""Weight-only quantization: the kernels against the dequantized reference, `moss quantize` folders,
and the engine's greedy tokens on int8/int4 weights against plain transformers on the same numbers."""

import json

import pytest
import torch

from mosslm import model as modellib
from mosslm.cli import main as moss
from mosslm.engine import SamplingParams
from mosslm.engine.engine import Engine, EngineConfig
from mosslm.quant import QuantError, QuantLinear, quantize
from mosslm.quant.linear import (dequantize_int4, pack_nibbles, quantize_int4, quantize_int8,
                                 unpack_nibbles)


def test_int8_and_int4_round_trips_stay_within_one_step_of_the_grid():
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    w[0, 0] = 12.0  # an outlier: a row's scale may clip it, only where that lowers the row's error
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    inside = w.abs() <= 127 * scale[:, None]
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6)[inside].all()
    plain = w.abs().amax(1) / 127
    plain_err = ((torch.round(w / plain[:, None]) * plain[:, None] - w) ** 2).sum(1)
    assert (((q.float() * scale[:, None] - w) ** 2).sum(1) <= plain_err + 1e-9).all()
    q4, s4, z4 = quantize_int4(w, 32)
    assert q4.max() <= 15 and q4.min() >= 0
    err = (dequantize_int4(q4, s4, z4, 32) - w).abs().view(48, 4, 32)
    assert (err <= s4[..., None] / 2 + 1e-5).all()
    # each group's extremes are exact: the asymmetric grid spans [min, max]
    back = dequantize_int4(q4, s4, z4, 32).view(48, 4, 32)
    assert torch.allclose(back.amin(2), w.view(48, 4, 32).amin(2), atol=1e-5)
    assert torch.equal(unpack_nibbles(pack_nibbles(q4)), q4)


@pytest.mark.parametrize("bits,group,kernel", [(8, None, "int8pack"), (8, 64, "dequantize"), (4, 32, "int4pack")])
def test_the_cpu_kernel_equals_a_plain_linear_on_the_dequantized_weight(bits, group, kernel, torch_quant_kernels):
    # torch's int8 kernel reads one scale per row: grouped int8 without mosslm's kernel converts blocks of weights
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 64, bias=True)
    layer = QuantLinear.from_linear(linear, bits, group)
    reference = layer.dequantized_weight()
    assert layer.prepare() == kernel
    x = torch.randn(2, 3, 128)
    expected = torch.nn.functional.linear(x, reference, linear.bias)
    assert torch.allclose(layer(x), expected, atol=1e-4)
    # bf16 activations (what `dtype auto` picks on a CPU with native bf16) stay close
    assert torch.allclose(layer.to(torch.bfloat16)(x.bfloat16()).float(), expected, atol=0.1, rtol=0.05)


def test_int8_with_many_rows_converts_in_blocks_and_keeps_the_numbers(monkeypatch, torch_quant_kernels):
    from mosslm.quant import linear as quant_linear

    torch.manual_seed(2)
    monkeypatch.setattr(quant_linear, "INT8_BLOCK_ROWS", 24)  # 64 outputs: three blocks, the last one short
    linear = torch.nn.Linear(128, 64, bias=True)
    layer = QuantLinear.from_linear(linear, 8)
    layer.prepare()
    few = torch.randn(quant_linear.INT8_MATMUL_ROWS, 128)
    many = torch.randn(quant_linear.INT8_MATMUL_ROWS * 3 + 1, 128)
    for x in (few, many):
        expected = torch.nn.functional.linear(x, layer.dequantized_weight(), linear.bias)
        assert torch.allclose(layer(x), expected, atol=1e-4)
    # the kernel and the block path agree row for row on the same input
    both = torch.cat([few, few, few])
    assert torch.allclose(layer(both)[: len(few)], layer(few), atol=1e-4)


def test_an_int8_weight_at_an_odd_address_is_copied_to_an_aligned_one(torch_quant_kernels):
    # safetensors hands out tensors at any byte offset; torch's int8 kernel crashed on one with 16 bf16 rows
    torch.manual_seed(3)
    layer = QuantLinear.from_linear(torch.nn.Linear(576, 192), 8)
    storage = torch.zeros(192 * 576 + 24, dtype=torch.int8)
    layer.qweight = storage[24:].view(192, 576)
    layer.qweight.copy_(quantize_int8(torch.randn(192, 576))[0])
    before = layer.dequantized_weight()
    layer.prepare()
    assert layer.qweight.data_ptr() % 64 == 0 and torch.equal(layer.dequantized_weight(), before)
    layer = layer.to(torch.bfloat16)
    x = torch.randn(16, 576).bfloat16()
    assert torch.allclose(layer(x).float(), x.float() @ before.t() + layer.bias.float(), atol=0.5, rtol=0.02)


def test_a_layer_the_int4_kernel_cannot_take_falls_back_to_the_dequantized_weight(torch_quant_kernels):
    linear = torch.nn.Linear(64, 40)  # 40 outputs: not a multiple of 16
    layer = QuantLinear.from_linear(linear, 4, 32)
    assert layer.prepare() == "dequantize"
    x = torch.randn(5, 64)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.dequantized_weight(), linear.bias), atol=1e-5)


def dequantized_twin(folder, source):
    """The source model with each linear holding exactly the weights its quantized copy stands for."""
    plain = modellib.load(source).model
    quantized = modellib.load(folder).model
    spec = json.loads((folder / "mosslm.json").read_text())["quantization"]
    plain.config.tie_word_embeddings = False
    plain.lm_head.weight = torch.nn.Parameter(plain.lm_head.weight.detach().clone())
    for name in spec["modules"]:
        layer = quantized.get_submodule(name)
        if spec["bits"] == 8:
            plain.get_submodule(name).weight.data = layer.dequantized_weight()
        else:  # the int4 kernel dropped the portable copy: reconstruct it from the folder
            q = QuantLinear(layer.in_features, layer.out_features, 4, layer.group_size)
            q.load_state_dict({k[len(name) + 1:]: v for k, v in reload(folder).items() if k.startswith(name + ".")})
            plain.get_submodule(name).weight.data = q.dequantized_weight()
    return plain.eval(), quantized


def reload(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "quantized.safetensors"))


@pytest.mark.parametrize("bits", [8, 4])
def test_engine_greedy_on_quantized_weights_equals_transformers_on_the_dequantized_model(
        bits, tiny_tokenizer, tmp_path):
    source = tmp_path / "fp"
    modellib.save_checkpoint(modellib.build_model("micro", tiny_tokenizer, seed=5), tiny_tokenizer, source)
    folder = tmp_path / f"int{bits}"
    spec = quantize(str(source), str(folder), bits)
    assert spec["bits"] == bits and "lm_head" in spec["modules"] and len(spec["modules"]) == 2 * 7 + 1
    plain, quantized = dequantized_twin(folder, source)
    assert sum(isinstance(m, QuantLinear) for m in quantized.modules()) == len(spec["modules"])
    plain.generation_config.eos_token_id = None  # the engine stops only where told to
    prompt = tiny_tokenizer.encode("你好！What is 12 times 7?", add_special_tokens=False)
    expected = plain.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=32, do_sample=False, pad_token_id=0)[0, len(prompt):]
    engine = Engine(quantized, tiny_tokenizer, EngineConfig(max_running=2, kv_budget_mb=8, max_seq_len=128))
    try:
        got = engine.submit(prompt, SamplingParams(max_new_tokens=32, temperature=0.0)).wait(60)
    finally:
        engine.shutdown()
    assert got.token_ids == expected.tolist()


def test_moss_quantize_writes_a_folder_chat_loads_and_plain_transformers_refuses(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "q8"
    assert moss(["quantize", "--model", str(tiny_checkpoint), "--bits", "8", "--out", str(out)]) == 0
    assert "int8" in capsys.readouterr().out
    loaded = modellib.load(out, dtype="fp32")
    assert loaded.speaks_moss and loaded.tokenizer.chat_template
    assert modellib.quant.weight_bytes(loaded.model) < modellib.quant.weight_bytes(modellib.load(tiny_checkpoint).model)
    from transformers import AutoModelForCausalLM
    with pytest.raises(OSError):  # no model.safetensors: never random weights in silence
        AutoModelForCausalLM.from_pretrained(out)


def test_bad_quantize_requests_get_clear_errors(tiny_checkpoint, tmp_path, capsys):
    assert moss(["quantize", "--model", str(tiny_checkpoint), "--bits", "4", "--group-size", "48",
                 "--out", str(tmp_path / "x")]) == 1
    assert "--group-size must be one of" in capsys.readouterr().err
    assert moss(["quantize", "--model", str(tiny_checkpoint), "--bits", "8", "--group-size", "32",
                 "--out", str(tmp_path / "x")]) == 2
    assert "int8 --group-size must be 0 (a scale per output channel) or one of 64" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    q = tmp_path / "q4"
    quantize(str(tiny_checkpoint), str(q), 4)
    with pytest.raises(QuantError, match="already quantized"):
        quantize(str(q), str(tmp_path / "again"), 8)
    (q / "quantized.safetensors").write_bytes(b"\0" * 10)  # a damaged file is caught by the manifest
    with pytest.raises(modellib.ModelLoadError):
        modellib.load(q)


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_a_gguf_export_loads_back_through_transformers_with_our_logits(quant, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "gguf" / f"tiny-{quant}.gguf"
    assert moss(["export", "--format", "gguf", "--model", str(tiny_checkpoint), "--quant", quant,
                 "--out", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ours = modellib.load(tiny_checkpoint).model
    theirs = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    ids = modellib.load(tiny_checkpoint).tokenizer.encode("你好！What is 12 times 7?<eom>", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == modellib.load(tiny_checkpoint).tokenizer.convert_ids_to_tokens(ids)
    with torch.no_grad():
        a, b = ours(torch.tensor([ids])).logits, theirs(torch.tensor([ids])).logits
    tolerance = 1e-3 if quant == "f16" else 5e-2  # f16 rounding of the weights; q8_0 is 8-bit blocks
    assert (a - b).abs().max() < tolerance
    modelfile = (out.parent / "Modelfile").read_text()
    assert f"FROM ./{out.name}" in modelfile and 'PARAMETER stop "<eom>"' in modelfile
    assert "<|Human|>: {{ .Content }}<eoh>\n<|MOSS|>:" in modelfile


def test_gguf_export_refuses_what_it_cannot_write(tiny_checkpoint, tmp_path, capsys):
    assert moss(["export", "--format", "gguf", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x.bin")]) == 2
    assert ".gguf" in capsys.readouterr().err
    q = tmp_path / "q8"
    quantize(str(tiny_checkpoint), str(q), 8)
    assert moss(["export", "--format", "gguf", "--model", str(q), "--out", str(tmp_path / "x.gguf")]) == 1
    assert "full-precision source" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("quant_type, bits", [("q8_0", 8), ("q4_0", 4), ("f16", None)])
def test_a_quantized_gguf_is_served_quantized(quant_type, bits, tiny_checkpoint, tmp_path, monkeypatch):
    from mosslm.quant import linear
    from mosslm.quant.gguf_export import export
    monkeypatch.setattr(linear, "Q4_KERNEL_ROWS", 0)  # the exact weights: no int8 rounding of the activations
    gguf = tmp_path / f"tiny-{quant_type}.gguf"
    export(str(tiny_checkpoint), str(gguf), quant_type, modelfile=False)
    served = modellib.load(gguf, gguf_quantized=True).model
    layers = [m for m in served.modules() if isinstance(m, QuantLinear)]
    assert {m.bits for m in layers} == ({bits} if bits else set())
    assert all(m.group_size == 32 for m in layers if bits == 4)  # the GGUF block size
    plain = modellib.load(gguf).model  # dequantized, as training and export read it
    assert not any(isinstance(m, QuantLinear) for m in plain.modules())
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        a, b = served(ids).logits, plain(ids).logits
    # Q4_0 blocks are copied bit for bit into the int4 format; Q8_0's 32-blocks are requantized to int8 in groups of 64
    tolerance = {8: 0.05, 4: 1e-4, None: 1e-6}[bits]
    assert (a - b).abs().max() < tolerance * max(1.0, b.abs().max().item())
