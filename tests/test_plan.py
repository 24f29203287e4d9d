"""`moss train plan`: the memory planner's counts, sharding, suggestions, CLI, and its estimates against the
peak memory of real training steps of our loop's pieces, measured in a fresh process."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosslm.model import PRESETS, count_parameters, model_config
from mosslm.train import plan, plan_cli
from mosslm.train.plan import GiB, PlanError, Setup, estimate

REPO = Path(__file__).resolve().parents[1]

# One training step as loop.py runs it (TokenLoss forward + backward, clipping, fused AdamW), in a fresh process.
# Each case: reset the peak RSS (VmHWM) to the current RSS, note RSS, build the model, run a short step that
# allocates AdamW's state, then the measured step; the growth from before the model existed to the peak is what
# the planner's `peak` (params + grads + optimizer + activations, as they coexist) must match.
MEASURE = r"""
import gc, json, sys
import torch
torch.set_num_threads(2)
from mosslm.model import model_config
from mosslm.train.loop import TokenLoss
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def step(net, params, opt, ids):
    (net(ids, ids) / ids.numel()).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

def build(preset, vocab, lora):
    model = AutoModelForCausalLM.from_config(model_config(preset, vocab_size=vocab), dtype=torch.float32)
    model.train()
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=TARGETS)).get_base_model()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=1e-3, fused=True)

def measure(preset, vocab, batch, seq, lora):
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS:")
    model, params, opt = build(preset, vocab, lora)
    built = status("VmRSS:")
    net = TokenLoss(model)
    step(net, params, opt, torch.randint(0, vocab, (batch, 8)))
    step(net, params, opt, torch.randint(0, vocab, (batch, seq)))
    return status("VmHWM:") - before, built - before

cases = json.loads(sys.argv[1])
for lora in sorted({c["lora"] for c in cases}):  # warm up kernels, thread pools and peft outside the measurement
    measure("micro", 256, 2, 16, lora)
for c in cases:
    c["measured"], c["model_rss"] = measure(c["preset"], c["vocab"], c["batch"], c["seq"], c["lora"])
    print(json.dumps(c), flush=True)
"""

CASES = [
    dict(preset="small", vocab=8192, batch=2, seq=128, lora=False),   # ~36M parameters: P+G+O dominate
    dict(preset="small", vocab=8192, batch=2, seq=128, lora=True),    # frozen base: activations dominate
    dict(preset="mini", vocab=8192, batch=2, seq=512, lora=False),    # long sequences: activations > weights
]


@pytest.fixture(scope="module")
def measured() -> list[dict]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read and reset the peak RSS")
    # glibc's default mmap threshold grows as big blocks are freed, after which freed tensors stay in its heap:
    # RSS then shows allocator slack, not tensors. Pinning the threshold returns each freed tensor to the OS, so
    # the peak RSS is the peak of live memory (docs/memory-planner.md gives the default-allocator figure too).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(CASES)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_estimates_within_20_percent_of_measured_peak(measured):
    assert len(measured) == len(CASES)
    for case in measured:
        dims = plan.preset_dims(case["preset"], case["vocab"])
        setup = Setup(strategy="lora" if case["lora"] else "ddp", micro_batch=case["batch"], seq_len=case["seq"],
                      dtype="fp32", device="cpu", lora_targets=plan.ATTENTION + plan.MLP, lora_dropout=0.05)
        e = estimate(dims, setup)
        ratio = e.peak / case["measured"]
        print(f"{case['preset']:>5} {'lora' if case['lora'] else 'full'} mb={case['batch']} seq={case['seq']}: "
              f"estimated {e.peak / 2**20:.1f} MiB (params {e.params / 2**20:.1f}, grads {e.grads / 2**20:.1f}, "
              f"optim {e.optimizer / 2**20:.1f}, activations {e.activations / 2**20:.1f}), measured "
              f"{case['measured'] / 2**20:.1f} MiB (model alone {case['model_rss'] / 2**20:.1f}): {ratio:.3f}")
        if e.params > 64 * 2**20:  # the weights alone, right after building (small models reuse freed heap)
            assert abs(e.params - case["model_rss"]) / case["model_rss"] < 0.1
        assert 0.8 <= ratio <= 1.2


def _saved_bytes(model, ids, autocast: bool) -> dict[str, int]:
    """Bytes autograd keeps for backward, by where they were saved: layer1 (a middle layer) and the head."""
    from mosslm.train.loop import TokenLoss

    where, seen, totals = ["embed"], set(), {}
    base = getattr(model, "get_base_model", lambda: model)()
    for i, layer in enumerate(base.model.layers):
        layer.register_forward_pre_hook(lambda mod, a, i=i: where.__setitem__(0, f"layer{i}"))
    base.model.norm.register_forward_pre_hook(lambda mod, a: where.__setitem__(0, "head"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen and key not in params:
            seen.add(key)
            totals[where[0]] = totals.get(where[0], 0) + t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            TokenLoss(base)(ids, ids)
    return totals


@pytest.mark.parametrize("dtype,lora,dropout", [("fp32", False, 0.0), ("bf16", False, 0.0), ("fp32", True, 0.05),
                                                ("bf16", True, 0.05), ("fp32", True, 0.0)])
def test_activation_formula_matches_autograds_saved_tensors(dtype, lora, dropout):
    from transformers import AutoModelForCausalLM

    config = model_config("mini", vocab_size=512, num_hidden_layers=3)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    if lora:
        from peft import LoraConfig, get_peft_model
        targets = list(plan.ATTENTION + plan.MLP)
        model = get_peft_model(model, LoraConfig(r=8, lora_dropout=dropout, target_modules=targets))
    batch, seq = 2, 32
    saved = _saved_bytes(model, torch.randint(0, 512, (batch, seq)), dtype == "bf16")
    dims = plan.dims_from_config(config)
    setup = Setup(strategy="lora" if lora else "ddp", dtype=dtype, device="cpu", lora_dropout=dropout,
                  micro_batch=batch, seq_len=seq)
    tokens = batch * seq
    layer = plan.layer_activation_bytes(dims, setup) * tokens
    if dtype == "bf16":  # autocast's bf16 weight copies are saved too; the planner counts them with the params
        layer += 2 * dims.layer_linear_params + (2 * plan.lora_params(dims, 8, plan.ATTENTION + plan.MLP) // dims.layers
                                                 if lora else 0)
    assert abs(saved["layer1"] - layer) / layer < 0.02, (saved, layer)
    head = plan.head_activation_bytes(dims, setup) * tokens + (2 * dims.vocab * dims.hidden if dtype == "bf16" else 0)
    measured_head = saved["head"] + saved.get("embed", 0)
    assert abs(measured_head - head) / head < 0.05, (saved, head)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_matches_count_parameters(preset):
    vocab = plan.PRESET_VOCAB.get(preset, 8192)
    assert plan.preset_dims(preset, vocab).total_params == count_parameters(model_config(preset, vocab_size=vocab))


def test_qwen2_biases_and_hf_folder(tmp_path):
    from transformers import Qwen2Config

    config = Qwen2Config(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    config.save_pretrained(tmp_path)
    dims, train = plan_cli.load_plan_config(str(tmp_path))
    assert train == {} and dims.qkv_bias
    assert dims.total_params == count_parameters(config)


def test_sharding_divides_by_n():
    dims = plan.preset_dims("moss-16b")
    one = {s: estimate(dims, Setup(strategy=s, gpus=1, dtype="fp32")) for s in ("ddp", "zero2", "zero3", "fsdp")}
    eight = {s: estimate(dims, Setup(strategy=s, gpus=8, dtype="fp32")) for s in one}
    for s in ("zero3", "fsdp"):
        for part in ("params", "grads", "optimizer"):
            assert getattr(eight[s], part) == pytest.approx(getattr(one[s], part) / 8)
    assert eight["zero2"].params == one["zero2"].params
    assert eight["zero2"].grads == pytest.approx(one["zero2"].grads / 8)
    assert eight["zero2"].optimizer == pytest.approx(one["zero2"].optimizer / 8)
    for part in ("params", "grads", "optimizer", "activations"):
        assert getattr(eight["ddp"], part) == getattr(one["ddp"], part)
    assert eight["zero3"].activations == one["zero3"].activations  # data parallel: activations are per device


def test_moss16b_needs_16_bytes_per_param_and_what_fits():
    dims = plan.preset_dims("moss-16b")
    assert 15e9 < dims.total_params < 17e9
    ddp = estimate(dims, Setup(strategy="ddp", dtype="fp32", seq_len=2048))
    assert (ddp.params + ddp.grads + ddp.optimizer) / dims.total_params == pytest.approx(16)
    gpu = 80 * GiB
    assert not ddp.fits(gpu, 0.15)
    zero3 = Setup(strategy="zero3", gpus=8, seq_len=2048)
    assert estimate(dims, zero3).fits(gpu, 0.15)
    assert plan.max_micro_batch(dims, zero3, gpu) >= 1
    fsdp = estimate(dims, Setup(strategy="fsdp", gpus=8, seq_len=2048))  # bf16 autocast copies stay whole
    assert fsdp.params == pytest.approx(4 * dims.total_params / 8 + 2 * dims.projection_params)
    qlora = Setup(strategy="qlora", seq_len=2048)
    assert estimate(dims, qlora).fits(gpu, 0.15)
    assert plan.max_micro_batch(dims, Setup(strategy="ddp", seq_len=2048), gpu) == 0
    line = plan.suggestion(dims, Setup(strategy="ddp", seq_len=2048), gpu)
    assert "does not fit" in line and "zero3 on 8+ devices" in line and "qlora" in line
    # the largest micro-batch is exactly the last one that fits
    best = plan.max_micro_batch(dims, qlora, gpu)
    assert estimate(dims, qlora, best).fits(gpu, 0.15) and not estimate(dims, qlora, best + 1).fits(gpu, 0.15)


def test_100b_yaml():
    dims, train = plan_cli.load_plan_config("plan-100b.yaml")  # the packaged config, by name
    assert 95e9 < dims.total_params < 105e9
    from transformers import LlamaConfig

    fields = {k: v for k, v in _model_fields().items() if k != "model_type"}
    assert dims.total_params == count_parameters(LlamaConfig(**fields))
    assert train["seq_len"] == 4096 and train["strategy"] == "zero3"
    setup = Setup(strategy="zero3", gpus=64, seq_len=4096, micro_batch=1)
    e = estimate(dims, setup)
    assert e.params == pytest.approx(2 * dims.total_params / 64)  # DeepSpeed bf16: a bf16 module, sharded
    assert e.optimizer == pytest.approx(12 * dims.total_params / 64)  # fp32 master + two AdamW states
    fp32 = estimate(dims, dataclasses.replace(setup, dtype="fp32"))
    assert fp32.params + fp32.grads + fp32.optimizer == pytest.approx(16 * dims.total_params / 64)
    assert not e.fits(80 * GiB, 0.15)  # no checkpointing: ~184 GiB of activations for one 4k sequence
    assert estimate(dims, dataclasses.replace(setup, checkpointing=True)).fits(80 * GiB, 0.15)


def _model_fields() -> dict:
    import yaml
    return yaml.safe_load((REPO / "mosslm/configs/plan-100b.yaml").read_text())["model"]


def _cli(*argv: str):
    parser = argparse.ArgumentParser(prog="moss train")
    plan_cli.add_plan_parser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def test_cli_table_for_moss16b(capsys):
    assert _cli("--preset", "moss-16b", "--gpus", "8", "--gpu-mem", "80") == 0
    out = capsys.readouterr().out
    print(out)
    assert "15.850B parameters" in out
    for strategy in plan.STRATEGIES:
        assert any(line.startswith(strategy + " ") for line in out.splitlines())
    assert "zero3: fits" in out and "ddp: does not fit" in out and "KV cache" in out


def test_cli_one_strategy_from_yaml(capsys):
    assert _cli("--config", "plan-100b.yaml", "--gpus", "64", "--gpu-mem", "80", "--strategy", "zero3") == 0
    out = capsys.readouterr().out
    print(out)
    assert "100.440B parameters" in out and "seq_len 4096" in out
    assert "zero3 + activation checkpointing" in out


@pytest.mark.parametrize("argv,message", [
    (["--preset", "nope"], "unknown model preset 'nope'"),
    (["--preset", "tiny", "--gpus", "0"], "--gpus must be >= 1"),
    (["--preset", "tiny", "--gpu-mem", "-1"], "--gpu-mem must be > 0"),
    (["--preset", "tiny", "--config", "plan-100b.yaml"], "not both"),
    (["--config", "missing.yaml"], "config not found"),
    ([], "give --preset NAME or --config FILE"),
])
def test_cli_bad_input(capsys, argv, message):
    assert _cli(*argv) == 2
    assert message in capsys.readouterr().err


def test_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nlearning_rate: 3\n")
    with pytest.raises(PlanError, match="unknown config key.*learning_rate"):
        plan_cli.load_plan_config(str(bad))
    bad.write_text("model:\n  hidden_size: 64\n")
    with pytest.raises(PlanError, match="lacks intermediate_size"):
        plan_cli.load_plan_config(str(bad))
    bad.write_text("model:\n  model_type: gpt2\n")
    with pytest.raises(PlanError, match="not a Llama-family"):
        plan_cli.load_plan_config(str(bad))
