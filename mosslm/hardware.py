"""What this machine can do, measured, and the precision `dtype: auto` picks from it.

Why measure instead of trusting the CPU's name: a bf16 matmul is a fast
native kernel only where the CPU has bf16 instructions (AVX512_BF16, AMX, Arm
BF16) and torch's kernels may use them. Everywhere else (AVX2-only CPUs: most
laptops and many cloud machines) torch falls back to a path that is ~100x
slower than fp32, and a bf16-autocast training step is ~10x slower. Even with
native bf16, small matrices can lose to fp32 through the casts. So `auto`
takes bf16 only where the CPU has native bf16 *and* a short measurement at the
shapes of the job at hand shows it faster; fp32 otherwise. On a GPU, bf16
where the GPU supports it.

The ISA seen here is the one torch and oneDNN will really use: the emulation
variables ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 make an AVX-512 machine behave (and measure) like
an AVX2-only one, which is how the AVX2 figures in the README were taken.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHOICES = ("auto", "fp32", "bf16")
MIN_BF16_GAIN = 1.1   # bf16 must measure at least this much faster to be picked: it costs precision
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


# ---------------------------------------------------------------- the CPU

@functools.cache
def cpu_info() -> dict[str, str | set[str]]:
    """Model name and feature flags (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or "unknown", "flags": flags}


def isa_level() -> str:
    """The vector ISA torch's own kernels dispatch to (AVX512, AVX2, DEFAULT, ...)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def onednn_bf16() -> bool:
    """Whether oneDNN will run bf16 here (False under ONEDNN_MAX_CPU_ISA=AVX2, as on AVX2-only CPUs)."""
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def native_bf16() -> tuple[bool, str]:
    """Whether bf16 matmuls can run on bf16 instructions here, and the CPU's label for the message."""
    flags = cpu_info()["flags"]
    level = isa_level()
    hw = [name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"), ("bf16", "Arm BF16"))
          if flag in flags]
    capped = [k for k in ISA_ENV if os.environ.get(k)]
    if hw and onednn_bf16() and level not in ("DEFAULT", "AVX2"):
        return True, "+".join(hw)
    if hw:  # the CPU has it, but torch was told not to use it (or cannot)
        return False, f"{level}; bf16 instructions off" + (f" by {', '.join(capped)}" if capped else "")
    return False, level


# ---------------------------------------------------------------- measurements

def _rate(fn: Callable[[], object], flops: float, seconds: float) -> float:
    """GFLOP/s of fn: one warm-up call, then calls until `seconds` have passed (at least one)."""
    fn()
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return flops * count / elapsed / 1e9


def matmul_gflops(dtype: torch.dtype, n: int = 512, seconds: float = 0.25) -> float:
    """A square matmul's rate. Inputs come from linspace: measuring draws nothing from the caller's RNG."""
    a = torch.linspace(-1, 1, n * n).view(n, n).to(dtype)
    b = a.t().contiguous()
    return _rate(lambda: a @ b, 2 * n ** 3, seconds)


TRAIN_MEASURE_FLOPS = 2e10   # per measured step: ~0.1-0.3 s at fp32 on a 2-core CPU


def train_step_gflops(dtype: str, config_json: str, tokens: int, seq_len: int, seconds: float = 0.3) -> float:
    """Forward and backward of a fresh copy of the model (a one-layer copy when the model is large) on
    a batch of its own shape, as the training loop runs it (autocast for bf16). Small matrices lose
    to the casts: only the model's own layers say whether bf16 pays at these shapes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.loads(config_json))
    with torch.random.fork_rng(devices=[]):  # weights drawn here leave the caller's random stream alone
        torch.manual_seed(0)
        with torch.device("meta"):
            full = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if 6 * full * 1024 > 5 * TRAIN_MEASURE_FLOPS:  # too big to run whole: one layer of it
            config.num_hidden_layers = 1
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
        params = sum(p.numel() for p in model.parameters())
        tokens = int(max(64, min(tokens, TRAIN_MEASURE_FLOPS / (6 * params))))
        width = max(8, min(seq_len, tokens))
        ids = torch.randint(0, config.vocab_size, (max(1, tokens // width), width))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits = model(input_ids=ids).logits
        F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten()).backward()
        model.zero_grad(set_to_none=True)

    return _rate(step, 6 * params * ids.numel(), seconds)


def decode_gflops(dtype: str, rows: int = 4, k: int = 2048, n: int = 2048, layers: int = 8,
                  seconds: float = 0.2) -> float:
    """A decode step's shape: a few rows through a stack of weights (by default 128 MB at fp32, more
    than the caches hold, as a real model's are)."""
    torch_dtype = DTYPES[dtype]
    x = torch.linspace(-1, 1, rows * k).view(rows, k).to(torch_dtype)
    ws = [torch.linspace(-0.1, 0.1, n * k).view(n, k).to(torch_dtype) for _ in range(layers)]

    def step():
        for w in ws:
            F.linear(x, w)

    return _rate(step, 2 * rows * k * n * layers, seconds)


def copy_bandwidth_gbs(mb: int = 256, seconds: float = 0.5) -> float:
    """Memory bandwidth of a large tensor copy (read + write), GB/s."""
    src = torch.ones(mb * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    return _rate(lambda: dst.copy_(src), 2 * src.numel() * 4, seconds)  # "flops" are bytes here


# ---------------------------------------------------------------- the choice

@dataclass(frozen=True)
class Measurement:
    """fp32 and bf16 rates of the same work, GFLOP/s; `what` names the work."""
    fp32: float
    bf16: float
    what: str

    @property
    def bf16_speedup(self) -> float:
        return self.bf16 / self.fp32


@dataclass(frozen=True)
class DtypeChoice:
    requested: str
    dtype: str                      # fp32 | bf16
    reason: str
    device: str = "cpu"
    bf16_speedup: float | None = None
    warning: str | None = None      # an explicit choice that runs slow here

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def line(self) -> str:
        return f"dtype {self.requested} -> {self.dtype}: {self.reason}"

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _times(speedup: float) -> str:
    if speedup >= 1:
        return f"{speedup:.2f}x faster"
    return f"{1 / speedup:.0f}x slower" if speedup < 0.5 else f"{1 / speedup:.2f}x slower"


def decide(requested: str, native: bool, cpu_label: str, measured: Measurement | None) -> DtypeChoice:
    """The CPU rule, from its inputs alone: bf16 only with native bf16 and a measured gain."""
    if requested not in CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(CHOICES)}, got {requested!r}")
    speedup = measured.bf16_speedup if measured else None
    how = f"bf16 {measured.what} measured {_times(speedup)}" if measured else ""
    if requested == "fp32":
        return DtypeChoice("fp32", "fp32", "as requested", bf16_speedup=speedup)
    if requested == "bf16":
        slow = speedup is not None and speedup < 1
        warning = (f"bf16 on this CPU ({cpu_label}) is slow: {how} than fp32; dtype auto would pick fp32"
                   if slow else None)
        return DtypeChoice("bf16", "bf16", "as requested" + (f"; {how}" if how else ""), bf16_speedup=speedup,
                           warning=warning)
    if not native:
        return DtypeChoice("auto", "fp32", f"no native bf16 on this CPU ({cpu_label})" + (f"; {how}" if how else ""),
                           bf16_speedup=speedup)
    if measured is None or speedup < MIN_BF16_GAIN:
        return DtypeChoice("auto", "fp32", f"native bf16 ({cpu_label}), but {how or 'not measured'}",
                           bf16_speedup=speedup)
    return DtypeChoice("auto", "bf16", f"native bf16 ({cpu_label}); {how}", bf16_speedup=speedup)


@dataclass(frozen=True)
class Workload:
    """The job whose precision is chosen: training (a micro-batch of `rows` tokens in sequences of
    `seq_len` through the model whose config is `config_json`) or decode (a few rows through `layers`
    weight matrices of hidden x intermediate)."""
    kind: str = "decode"            # train | decode
    rows: int = 4
    hidden: int = 2048
    intermediate: int = 2048
    layers: int = 8
    seq_len: int = 0
    config_json: str = ""

    @classmethod
    def training(cls, tokens: int, seq_len: int, model_config) -> Workload:
        config = model_config.to_diff_dict() if hasattr(model_config, "to_diff_dict") else dict(model_config)
        config.setdefault("model_type", getattr(model_config, "model_type", "llama"))
        return cls("train", tokens, getattr(model_config, "hidden_size", 0),
                   getattr(model_config, "intermediate_size", 0), 1, seq_len, json.dumps(config, sort_keys=True))

    @classmethod
    def decoding(cls, model_config, rows: int = 4) -> Workload:
        """The model's MLP matrices (three a layer), capped at 256 MB of fp32 weights to measure."""
        hidden = getattr(model_config, "hidden_size", 2048)
        inter = getattr(model_config, "intermediate_size", 4 * hidden)
        layers = 3 * getattr(model_config, "num_hidden_layers", 8)
        return cls("decode", rows, hidden, inter, max(1, min(layers, (256 << 20) // (4 * hidden * inter))))


def measure(workload: Workload, native: bool) -> Measurement:
    """bf16 against fp32 on the workload; without native bf16 a small matmul is enough to say how slow."""
    if not native:  # the slow path takes ~1 GFLOP/s: keep it to a few tens of ms
        return Measurement(matmul_gflops(torch.float32, 256, 0.05), matmul_gflops(torch.bfloat16, 256, 0.05),
                           "matmul")
    if workload.kind == "train":
        args = (workload.config_json, workload.rows, workload.seq_len)
        return Measurement(*_interleaved(lambda d: train_step_gflops(d, *args)), "training forward+backward")
    args = (workload.rows, workload.hidden, workload.intermediate, workload.layers)
    return Measurement(*_interleaved(lambda d: decode_gflops(d, *args)), "decode matmuls")


def _interleaved(rate) -> tuple[float, float]:
    """(fp32, bf16) rates, each the best of two runs taken in turn: on a busy machine a burst of other work
    during one of two back-to-back runs once turned a measured 2.3x bf16 gain into "2x slower"."""
    fp32, bf16 = rate("fp32"), rate("bf16")
    return max(fp32, rate("fp32")), max(bf16, rate("bf16"))


_announced: set[str] = set()


@functools.cache
def _choose_cached(requested: str, device: str, workload: Workload) -> DtypeChoice:
    if device.startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
        if requested == "auto":
            return DtypeChoice("auto", "bf16" if ok else "fp32",
                               f"{name} {'supports' if ok else 'lacks'} bf16", device="cuda")
        return DtypeChoice(requested, requested, "as requested", device="cuda")
    if device != "cpu":
        return DtypeChoice(requested, "fp32" if requested == "auto" else requested, f"{device}: fp32 by default",
                           device=device)
    native, label = native_bf16()
    measured = None if requested == "fp32" else measure(workload, native)
    return decide(requested, native, label, measured)


def choose_dtype(requested: str = "auto", device: str | torch.device = "cpu", workload: Workload = Workload(),
                 announce: bool = True) -> DtypeChoice:
    """Resolve auto/fp32/bf16 for this device and job; prints the choice (and any warning) once per process."""
    if requested not in CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(CHOICES)}, got {requested!r}")
    choice = _choose_cached(requested, torch.device(device).type, workload)
    if announce and choice.line() not in _announced:
        _announced.add(choice.line())
        print(choice.line(), file=sys.stderr, flush=True)
        if choice.warning:
            print(f"warning: {choice.warning}", file=sys.stderr, flush=True)
    return choice


# ---------------------------------------------------------------- `moss env`

SHOWN_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni",
               "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve", "bf16")
OPTIONAL = {"llama_cpp": "llama-cpp-python", "vllm": "vllm", "peft": "peft", "trl": "trl",
            "deepspeed": "deepspeed", "gguf": "gguf", "accelerate": "accelerate", "torchao": "torchao",
            "selenium": "selenium", "diffusers": "diffusers", "jieba": "jieba"}


def _installed() -> dict[str, str]:
    import importlib.metadata
    import importlib.util

    found = {}
    for module, dist in OPTIONAL.items():
        if importlib.util.find_spec(module) is not None:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "installed"
    return found


def _gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({"name": p.name, "memory_gb": round(p.total_memory / 2 ** 30, 1),
                    "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})
    return out


def env_report(measure_speed: bool = True) -> dict:
    """Everything a slow-run report needs, as a dict (`moss env --json` prints it)."""
    from . import __version__

    info = cpu_info()
    native, label = native_bf16()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {
        "mosslm": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": {"model": info["model"], "cores": cores, "threads": torch.get_num_threads(),
                "flags": [f for f in SHOWN_FLAGS if f in info["flags"]], "torch_isa": isa_level(),
                "onednn_bf16": onednn_bf16(),
                "native_bf16": native, "label": label,
                "isa_env": {k: os.environ[k] for k in (*ISA_ENV, "OMP_NUM_THREADS") if os.environ.get(k)}},
        "gpus": _gpus(), "optional": _installed(),
    }
    if measure_speed:
        n_bf16 = 1024 if native else 256  # the slow path would take seconds at 1024
        report["measured"] = {"fp32_matmul_gflops": round(matmul_gflops(torch.float32, 1024, 0.5), 1),
                              "bf16_matmul_gflops": round(matmul_gflops(torch.bfloat16, n_bf16, 0.5), 1),
                              "copy_gbs": round(copy_bandwidth_gbs(), 1)}
        # A 34M-class model (the `small` preset), for training and for serving.
        from .model import model_config

        small = model_config("small", vocab_size=8192)
        train = choose_dtype("auto", "cpu", Workload.training(4096, 512, small), announce=False)
        decode = choose_dtype("auto", "cpu", Workload.decoding(small), announce=False)
        report["dtype_auto"] = {"training, 34M model": train.line(), "inference, 34M model": decode.line()}
        if report["gpus"]:
            report["dtype_auto"]["cuda"] = choose_dtype("auto", "cuda", announce=False).line()
    return report


def format_env(r: dict) -> str:
    cpu = r["cpu"]
    lines = [f"mosslm {r['mosslm']}, Python {r['python']}, torch {r['torch']}, {r['platform']}",
             f"cpu: {cpu['model']}, {cpu['cores']} cores, torch threads {cpu['threads']}",
             f"cpu flags: {' '.join(cpu['flags']) or 'none of the vector flags mosslm looks for'}",
             f"isa torch uses: {cpu['torch_isa']}; oneDNN bf16: {'yes' if cpu['onednn_bf16'] else 'no'}; "
             f"native bf16: {'yes (' + cpu['label'] + ')' if cpu['native_bf16'] else 'no (' + cpu['label'] + ')'}"]
    if cpu["isa_env"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in cpu["isa_env"].items()))
    if "measured" in r:
        m = r["measured"]
        lines.append(f"measured: fp32 matmul {m['fp32_matmul_gflops']:.1f} GFLOP/s, bf16 matmul "
                     f"{m['bf16_matmul_gflops']:.1f} GFLOP/s ({m['bf16_matmul_gflops'] / m['fp32_matmul_gflops']:.2f}x), "
                     f"copy bandwidth {m['copy_gbs']:.1f} GB/s")
    gpus = r["gpus"]
    lines.append("gpus: " + ("; ".join(f"{g['name']} ({g['memory_gb']} GB, sm {g['capability']}, bf16 "
                                       f"{'yes' if g['bf16'] else 'no'})" for g in gpus) if gpus else "none"))
    extras = r["optional"]
    lines.append("optional packages: " + (", ".join(f"{k} {v}" for k, v in extras.items()) if extras else "none"))
    for what, line in r.get("dtype_auto", {}).items():
        lines.append(f"precision ({what}): {line}")
    return "\n".join(lines)
