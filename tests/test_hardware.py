"""`dtype: auto` and `moss env`: the precision follows what this CPU measures, and every run records it."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from mosslm import hardware
from mosslm.hardware import Measurement, Workload, decide

# Makes an AVX-512 machine use (and measure) only AVX2 kernels: torch's, oneDNN's and MKL's.
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                              reason="the AVX2 emulation variables exist on x86 only")


def moss(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mosslm", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- the rule, from its inputs

def test_auto_picks_fp32_where_bf16_measures_slower():
    no_native = decide("auto", False, "AVX2", Measurement(fp32=168.0, bf16=1.0, what="matmul"))
    assert no_native.dtype == "fp32" and no_native.torch_dtype == torch.float32
    assert no_native.line() == "dtype auto -> fp32: no native bf16 on this CPU (AVX2); bf16 matmul measured 168x slower"
    native_but_slow = decide("auto", True, "AVX512_BF16",
                             Measurement(fp32=100.0, bf16=90.0, what="training forward+backward"))
    assert native_but_slow.dtype == "fp32"
    assert "but bf16 training forward+backward measured 1.11x slower" in native_but_slow.reason
    marginal = decide("auto", True, "AMX", Measurement(fp32=100.0, bf16=105.0, what="decode matmuls"))
    assert marginal.dtype == "fp32", "a gain below MIN_BF16_GAIN does not pay for the lost precision"


def test_auto_picks_bf16_where_native_bf16_measures_faster():
    choice = decide("auto", True, "AVX512_BF16",
                    Measurement(fp32=180.0, bf16=410.0, what="training forward+backward"))
    assert choice.dtype == "bf16" and choice.torch_dtype == torch.bfloat16
    assert choice.line() == ("dtype auto -> bf16: native bf16 (AVX512_BF16); bf16 training forward+backward "
                             "measured 2.28x faster")
    assert choice.as_dict()["bf16_speedup"] == pytest.approx(410 / 180)


def test_explicit_choices_are_kept_and_a_slow_bf16_warns_with_the_measured_slowdown():
    slow = decide("bf16", False, "AVX2", Measurement(fp32=150.0, bf16=1.0, what="matmul"))
    assert slow.dtype == "bf16"
    assert "150x slower than fp32" in slow.warning and "auto would pick fp32" in slow.warning
    fast = decide("bf16", True, "AMX", Measurement(fp32=100.0, bf16=900.0, what="matmul"))
    assert fast.dtype == "bf16" and fast.warning is None
    assert decide("fp32", True, "AMX", None).dtype == "fp32"
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16"):
        decide("fp16", True, "AMX", None)


def test_the_training_workload_is_the_model_itself_at_its_batch_shape():
    from mosslm.model import model_config

    w = Workload.training(16 * 256, 256, model_config("tiny", vocab_size=512))
    assert (w.kind, w.rows, w.seq_len, w.hidden, w.intermediate) == ("train", 4096, 256, 128, 384)
    config = json.loads(w.config_json)
    assert config["model_type"] == "llama" and config["vocab_size"] == 512 and config["num_hidden_layers"] == 4
    assert hash(w) == hash(Workload.training(16 * 256, 256, model_config("tiny", vocab_size=512)))  # cached once


# ---------------------------------------------------------------- real measurements on this machine

@x86_only
def test_avx2_kernels_measure_bf16_slow_so_auto_trains_and_serves_in_fp32():
    result = moss("env", "--json", env=AVX2, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["cpu"]["torch_isa"] == "AVX2" and report["cpu"]["native_bf16"] is False
    m = report["measured"]
    assert m["bf16_matmul_gflops"] < m["fp32_matmul_gflops"], m
    for line in report["dtype_auto"].values():
        assert line.startswith("dtype auto -> fp32: no native bf16 on this CPU"), line


def test_native_bf16_measures_faster_so_auto_trains_in_bf16():
    native, label = hardware.native_bf16()
    if not native:
        pytest.skip(f"this CPU has no native bf16 ({label}); the AVX2 test covers the fp32 side")
    from mosslm.model import model_config

    workload = Workload.training(8 * 512, 512, model_config("small", vocab_size=8192))
    choice = hardware.choose_dtype("auto", "cpu", workload, announce=False)
    assert choice.dtype == "bf16", choice.line()
    assert choice.bf16_speedup >= hardware.MIN_BF16_GAIN


def test_measuring_draws_nothing_from_the_callers_random_stream():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    from mosslm.model import model_config

    hardware.measure(Workload.training(64, 32, model_config("micro", vocab_size=300)), native=True)
    hardware.measure(Workload("decode", 2, 64, 64, 2), native=True)
    hardware.measure(Workload(), native=False)
    assert torch.equal(torch.rand(3), expected)


def test_moss_env_prints_what_a_slow_run_report_needs():
    result = moss("env", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for needle in ("cpu: ", "cpu flags: ", "isa torch uses: ", "torch threads", "fp32 matmul", "bf16 matmul",
                   "copy bandwidth", "gpus: ", "optional packages: ", "precision (training, 34M model): dtype auto -> ",
                   "precision (inference, 34M model): dtype auto -> "):
        assert needle in out, (needle, out)
    quick = moss("env", "--no-measure", "--json", timeout=60)
    assert quick.returncode == 0 and "measured" not in json.loads(quick.stdout)


# ---------------------------------------------------------------- the choice reaches the run's records

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mosslm.data.synth import generate_corpus
    from mosslm.tokenizer import train_from_files

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root / "data", seed=5, scale=0.02)
    train_from_files([str(root / "data" / "pretrain.jsonl")], 500, str(root / "tok"), show_progress=False)
    return root


@x86_only
def test_auto_on_avx2_kernels_trains_in_fp32_and_says_so_in_metrics_config_and_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    result = moss("train", "pretrain", f"tokenizer={corpus / 'tok'}", f"train={corpus / 'data' / 'pretrain.jsonl'}",
                  "preset=micro", "seq_len=64", "batch_size=4", "micro_batch_size=4", "max_steps=4", "log_every=2",
                  "save_every=100", "progress=false", f"out={out}", env=AVX2)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(l for l in result.stderr.splitlines() if l.startswith("dtype auto -> "))
    assert line.startswith("dtype auto -> fp32: no native bf16 on this CPU (AVX2") and "measured" in line
    meta = json.loads((out / "final" / "mosslm.json").read_text())
    assert meta["train_dtype"] == "fp32" and meta["train_dtype_choice"] == line
    assert json.loads((out / "config.json").read_text())["dtype_choice"]["dtype"] == "fp32"
    logged = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["dtype"] for r in logged if "tokens_per_s" in r} == {"fp32"}


@x86_only
def test_a_resumed_run_keeps_the_precision_it_began_with(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "pretrain", f"tokenizer={corpus / 'tok'}", f"train={corpus / 'data' / 'pretrain.jsonl'}",
            "preset=micro", "seq_len=64", "batch_size=4", "micro_batch_size=4", "log_every=1", "save_every=2",
            "progress=false", f"out={out}"]
    first = moss(*args, "max_steps=3", env=AVX2)  # begins in fp32: AVX2 kernels
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = moss(*args, "max_steps=5", "--resume")  # this CPU as it is: auto could measure otherwise
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "dtype auto -> fp32: as the run began (resumed)" in resumed.stderr
    meta = json.loads((out / "final" / "mosslm.json").read_text())
    assert meta["train_dtype"] == "fp32" and meta["train_dtype_choice"].endswith("as the run began (resumed)")
    logged = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5] and {r["dtype"] for r in logged} == {"fp32"}
