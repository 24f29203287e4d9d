"""`moss train plan`'s command line: the model from a config, a preset or a checkpoint, the strategies side by
side, and the table it prints. The arithmetic is in plan.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from .plan import (ATTENTION, CPU_HEADROOM, DEFAULT_LORA_R, DEFAULT_VOCAB, GiB, MLP, STRATEGIES, ModelDims,
                   PlanError, Setup, dims_from_config, estimate, kv_cache_bytes, max_micro_batch, preset_dims,
                   suggestion)

# ---------------------------------------------------------------- the model a config names

TRAIN_KEYS = ("preset", "init", "context_length", "seq_len", "micro_batch_size", "dtype", "lora_r", "lora_dropout",
              "lora_targets", "qlora", "strategy")


def load_plan_config(path: str, vocab_size: int | None = None) -> tuple[ModelDims, dict[str, Any]]:
    """A model from a YAML (TrainConfig keys with preset= or init=, or a `model:` mapping of LlamaConfig
    fields), a config.json file or an HF checkpoint folder. Returns the dims and the YAML's training keys."""
    import json

    from ..yaml_config import read_mapping
    from .config import TrainConfig

    p = Path(path).expanduser()
    packaged = Path(__file__).resolve().parents[1] / "configs" / p.name
    if not p.exists() and packaged.exists():
        p = packaged
    if not p.exists():
        raise PlanError(f"config not found: {path}")
    if p.is_dir() or p.name == "config.json":
        folder = p if p.is_dir() else p.parent
        if not (folder / "config.json").exists():
            raise PlanError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
        try:
            fields = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise PlanError(f"{folder / 'config.json'}: invalid JSON: {e}") from None
        return dims_from_config(fields, name=folder.name), {}
    data = read_mapping(p, PlanError)
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"model"}
    unknown = set(data) - known
    if unknown:
        raise PlanError(f"{p}: unknown config key(s): {', '.join(sorted(unknown))}")
    train = {k: data[k] for k in TRAIN_KEYS if k in data}
    if isinstance(data.get("model"), dict):
        fields = dict(data["model"])
        if vocab_size:
            fields["vocab_size"] = vocab_size
        return dims_from_config(fields, name=p.stem), train
    if data.get("init"):
        return load_plan_config(str(data["init"]), vocab_size)[0], train
    return preset_dims(str(data.get("preset", "tiny")), vocab_size or _tokenizer_vocab(data.get("tokenizer"))), train


def _tokenizer_vocab(folder: str | None) -> int | None:
    """The vocabulary of the config's tokenizer folder when it exists (a fresh preset takes its size)."""
    if not folder or not (Path(folder) / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder))


# ---------------------------------------------------------------- the CLI

def local_device() -> tuple[str, float]:
    """("cuda", the first GPU's memory) or ("cpu", this machine's RAM)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", float(torch.cuda.get_device_properties(0).total_memory)
    return "cpu", float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_plan(dims: ModelDims, setups: list[Setup], device_bytes: float) -> str:
    g = lambda b: f"{b / GiB:.2f}" if b < 10 * GiB else f"{b / GiB:.1f}"  # noqa: E731
    first = setups[0]
    precision = ("bf16 (autocast over fp32 weights; zero2/zero3: DeepSpeed's bf16 module)" if first.dtype == "bf16"
                 else "fp32")
    lines = [f"model {dims.name}: {dims.total_params / 1e9:.3f}B parameters ({dims.layers} layers, hidden "
             f"{dims.hidden}, MLP {dims.intermediate}, {dims.heads} heads / {dims.kv_heads} kv, vocab {dims.vocab}"
             f"{', tied' if dims.tied else ''})",
             f"{first.gpus} {first.device} device(s) x {device_bytes / GiB:.1f} GiB, micro-batch "
             f"{first.micro_batch} x seq_len {first.seq_len}, {precision}, fused AdamW; activation checkpointing "
             f"{'on' if first.checkpointing else 'off (as our loop runs), on for qlora'}", "",
             "GiB per device   params   grads   optim  activ   other    peak  fits  max micro-batch"]
    for s in setups:
        e = estimate(dims, s)
        best = max_micro_batch(dims, s, device_bytes)
        lines.append(f"{s.strategy:<15} {g(e.params):>7} {g(e.grads):>7} {g(e.optimizer):>7} {g(e.activations):>6} "
                     f"{g(e.other):>7} {g(e.peak):>7}  {'yes' if e.fits(device_bytes, s.headroom) else 'no':<4}  "
                     f"{best or '-'}")
    lines += ["", "peak = params + optim + other + max(activations + head grads + logits grads, grads); "
              f"{first.headroom:.0%} of the device kept free", ""]
    lines += [suggestion(dims, s, device_bytes) for s in setups]
    kv = kv_cache_bytes(dims, first.micro_batch, first.seq_len)
    lines += ["", f"inference (bf16): weights {g(2 * dims.total_params)} GiB + KV cache {g(kv)} GiB at batch "
              f"{first.micro_batch} x context {first.seq_len} = {g(2 * dims.total_params + kv)} GiB"]
    return "\n".join(lines)


def build_setups(args: argparse.Namespace, train: dict[str, Any], device: str = "cuda") -> list[Setup]:
    strategy = args.strategy or None
    dtype = args.dtype or train.get("dtype", "bf16")
    if dtype == "auto":
        dtype = "bf16"  # what `auto` picks on a GPU
    if dtype not in ("fp32", "bf16"):
        raise PlanError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    if args.gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {args.gpus}")
    base = Setup(gpus=args.gpus, micro_batch=args.micro_batch or int(train.get("micro_batch_size", 1)),
                 seq_len=args.seq_len or int(train.get("seq_len", 2048)), dtype=dtype,
                 lora_r=args.lora_r or int(train.get("lora_r") or DEFAULT_LORA_R),
                 lora_targets=tuple(train.get("lora_targets", ATTENTION + MLP)),
                 lora_dropout=float(train.get("lora_dropout", 0.05)), checkpointing=args.checkpointing,
                 headroom=args.headroom if args.headroom is not None else CPU_HEADROOM if device == "cpu" else 0.15,
                 device=device)
    if base.micro_batch < 1 or base.seq_len < 1:
        raise PlanError("--micro-batch and --seq-len must be >= 1")
    if not 0 <= base.headroom < 1:
        raise PlanError("--headroom must be in [0, 1)")
    # bitsandbytes' 4-bit kernels need a CUDA GPU: a CPU plan shows qlora only when asked for
    names = [strategy] if strategy else [s for s in STRATEGIES if device == "cuda" or s != "qlora"]
    return [dataclasses.replace(base, strategy=name) for name in names]


def add_plan_parser(train_verbs) -> None:
    """Register `moss train plan` on the `moss train` subparsers."""
    plan = train_verbs.add_parser("plan", help="estimate training memory per device, per strategy",
                                  description="Memory per device for a training run: parameters, gradients, "
                                              "AdamW state, activations, and the peak, for DDP, ZeRO-2, FSDP, "
                                              "ZeRO-3, LoRA and QLoRA; suggests the largest micro-batch that fits.")
    plan.add_argument("--config", help="training YAML (preset= / init= / a model: mapping), a config.json or an "
                                       "HF checkpoint folder")
    plan.add_argument("--preset", help="a model preset (see mosslm/model.py)")
    plan.add_argument("--vocab-size", type=int, help=f"vocabulary for a preset (default {DEFAULT_VOCAB}; "
                                                     "moss-16b: 106072, MOSS's tokenizer)")
    plan.add_argument("--gpus", type=int, default=1, help="devices (data-parallel ranks)")
    plan.add_argument("--gpu-mem", type=float, help="GiB per device (default: this GPU, or this machine's RAM)")
    plan.add_argument("--micro-batch", type=int, help="sequences per forward pass (default: the config's, else 1)")
    plan.add_argument("--seq-len", type=int, help="tokens per sequence (default: the config's, else 2048)")
    plan.add_argument("--dtype", choices=["fp32", "bf16", "auto"], help="fp32, or bf16 autocast (default)")
    plan.add_argument("--strategy", choices=STRATEGIES, help="one strategy (default: all side by side)")
    plan.add_argument("--lora-r", type=int, help=f"LoRA rank for lora/qlora (default {DEFAULT_LORA_R})")
    plan.add_argument("--checkpointing", action="store_true", help="assume activation checkpointing")
    plan.add_argument("--headroom", type=float, help="fraction of device memory kept free (default 0.15 on a "
                                                   "GPU, 0.30 in CPU RAM, where glibc keeps freed blocks)")
    plan.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    import sys

    try:
        if args.config and args.preset:
            raise PlanError("give --config or --preset, not both")
        if args.config:
            dims, train = load_plan_config(args.config, args.vocab_size)
        elif args.preset:
            dims, train = preset_dims(args.preset, args.vocab_size), {}
        else:
            raise PlanError("give --preset NAME or --config FILE")
        if args.gpu_mem is not None and args.gpu_mem <= 0:
            raise PlanError("--gpu-mem must be > 0 (GiB)")
        device, device_bytes = ("cuda", args.gpu_mem * GiB) if args.gpu_mem else local_device()
        setups = build_setups(args, train, device)
        print(format_plan(dims, setups, device_bytes))
    except PlanError as e:
        print(f"moss train plan: {e}", file=sys.stderr)
        return 2
    return 0
