"""Training configuration: YAML files plus `key=value` overrides from the CLI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..yaml_config import read_mapping

LOSS_PARTS = ("meta", "human", "thoughts", "commands", "results", "reply")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


@dataclass
class TrainConfig:
    stage: str = "pretrain"                  # pretrain | sft | dpo
    out: str = "runs/train"                  # run folder: checkpoints, metrics, final model
    tokenizer: str = ""                      # tokenizer folder (or a checkpoint folder)
    init: str | None = None                  # start from this checkpoint folder; else a fresh preset
    preset: str = "tiny"                     # model size preset when not starting from init
    context_length: int = 1024               # model context (max_position_embeddings) of a fresh model
    # .jsonl/.json/.txt files, cleaned-shard folders (moss data clean) or token-shard folders (moss data tokenize)
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    seq_len: int = 512                       # pretrain: packed length; sft: truncation length
    batch_size: int = 16                     # sequences per optimizer step, over all processes
    micro_batch_size: int = 8                # sequences per forward pass in one process
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"                      # auto (measured: mosslm/hardware.py) | bf16 (autocast) | fp32
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 500
    keep_checkpoints: int = 2
    loss_on: list[str] = field(default_factory=lambda: ["thoughts", "commands", "reply"])
    group_by_length: bool = True             # sft: batch conversations of similar length (less padding)
    plugins: list[str] = field(default_factory=list)  # plugins the model is trained to use (mosslm.json)
    protocol: str = "mosslm"                 # protocol preset written into the checkpoint
    progress: bool = True
    # LoRA / QLoRA (`moss finetune`; also `moss train sft|dpo lora_r=8`): 0 = train every weight
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0                # dropout on the adapters; its masks cost ~half a CPU forward
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    qlora: bool = False                      # 4-bit base weights (bitsandbytes), where the device supports it
    add_protocol_tokens: bool = False        # `--protocol moss`: terminators and role tags become special tokens
    # DPO (`moss train dpo`)
    dpo_beta: float = 0.1
    dpo_loss: str = "sigmoid"                # sigmoid | ipo
    dpo_reference: str = "precomputed"       # precomputed (log-probs once, no second model) | model (frozen copy)
    # Sharding under torchrun: ddp (a full copy per process) | fsdp (FSDP2) | zero2 | zero3 (DeepSpeed)
    strategy: str = "ddp"
    deepspeed: dict = field(default_factory=dict)  # extra DeepSpeed config keys, merged over ours

    def validate(self) -> None:
        problems = []
        if self.stage not in ("pretrain", "sft", "dpo"):
            problems.append(f"stage must be pretrain, sft or dpo, got {self.stage!r}")
        if self.lora_r < 0:
            problems.append("lora_r must be >= 0 (0 = no LoRA)")
        if self.qlora and self.lora_r == 0:
            problems.append("qlora needs lora_r > 0")
        if self.dpo_loss not in ("sigmoid", "ipo"):
            problems.append(f"dpo_loss must be sigmoid or ipo, got {self.dpo_loss!r}")
        if self.dpo_reference not in ("precomputed", "model"):
            problems.append(f"dpo_reference must be precomputed or model, got {self.dpo_reference!r}")
        if self.dpo_beta <= 0:
            problems.append("dpo_beta must be > 0")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not self.tokenizer and not self.init:
            problems.append("set tokenizer= (a tokenizer folder) or init= (a checkpoint)")
        if not self.train:
            problems.append("train= needs at least one data file")
        if self.dtype not in ("auto", "bf16", "fp32"):
            problems.append(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.batch_size % self.micro_batch_size:
            problems.append(f"batch_size {self.batch_size} must be a multiple of micro_batch_size {self.micro_batch_size}")
        for name in ("seq_len", "batch_size", "micro_batch_size", "max_steps", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.lr <= 0:
            problems.append("lr must be > 0")
        unknown = set(self.loss_on) - set(LOSS_PARTS)
        if unknown:
            problems.append(f"loss_on has unknown parts {sorted(unknown)}; known: {', '.join(LOSS_PARTS)}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))


def _coerce(name: str, raw: str, current: Any) -> Any:
    """Turn an override string into the field's type (YAML rules for lists/bools/numbers)."""
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(current, list) and isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if isinstance(current, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if current is not None and not isinstance(value, type(current)) and not (
            current is None or value is None):
        raise ValueError(f"override {name}={raw!r}: expected {type(current).__name__}")
    return value


def load_config(path: str | None, overrides: list[str] = (), stage: str | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        packaged = Path(__file__).resolve().parents[1] / "configs" / p.name
        if not p.exists() and packaged.exists():
            p = packaged  # a config that ships with mosslm, by name
        if not p.exists():
            raise ValueError(f"config file not found: {p}")
        data = read_mapping(p)
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        if key not in known:
            raise ValueError(f"unknown config key {key!r}")
        setattr(cfg, key, _coerce(key, raw, getattr(cfg, key)))
    if stage:
        cfg.stage = stage
    cfg.validate()
    return cfg
