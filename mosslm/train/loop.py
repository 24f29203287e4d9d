"""The training loop: one explicit loop for pretrain and sft.

Runs on one CPU, or data-parallel under `torchrun` (DDP: gloo on CPU, NCCL on
GPU). Checkpoints are atomic folders with a checksum manifest; `resume`
continues exactly where a killed run stopped (same batches, same losses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import hardware
from .. import model as modellib
from ..paths import atomic_dir
from ..model import MANIFEST, CheckpointError, verify_checkpoint, write_manifest
from .config import TrainConfig
from . import compiled, sharding
from .data import IGNORE, Dataset, load_dataset

STATE_FILE = "trainer_state.pt"


# ---------------------------------------------------------------- distributed

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Dist(rank, world, device)


# ---------------------------------------------------------------- schedule

def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# ---------------------------------------------------------------- checkpoints

def save_training_checkpoint(run: Path, step: int, model, tokenizer, optimizer, cfg: TrainConfig, keep: int,
                             dtype: str = "fp32", sharder=None) -> Path:
    """Rank 0 writes it; with a sharder (FSDP/DeepSpeed) every rank calls this and helps."""
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:07d}"
    if sharder is not None:
        sharding.save_checkpoint(final, sharder, tokenizer, {"step": step, "config": dataclasses.asdict(cfg),
                                 "dtype": dtype, "strategy": sharder.strategy}, STATE_FILE)
        if not sharder.main:
            return final
    else:
        with atomic_dir(final) as tmp:
            if hasattr(model, "peft_config"):  # LoRA: the adapter and the protocol tokens' rows, as in final/
                from .lora import save_adapter_weights
                save_adapter_weights(model, tmp / "model")
            else:
                model.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "config": dataclasses.asdict(cfg),
                        "dtype": dtype}, tmp / STATE_FILE)
            write_manifest(tmp)
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
    return found[-1] if found else None


# ---------------------------------------------------------------- the loop

def _load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.init)


def _build_model(cfg: TrainConfig, tokenizer):
    from transformers import AutoModelForCausalLM

    if cfg.init:
        folder = Path(cfg.init)
        if (folder / MANIFEST).exists():
            verify_checkpoint(folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return modellib.build_model(cfg.preset, tokenizer, seed=cfg.seed, max_position_embeddings=cfg.context_length)


def build_model_and_tokenizer(cfg: TrainConfig, dist: Dist):
    """The model to train, on its device in train mode, and its tokenizer: a preset or an init checkpoint,
    or with lora_r > 0 a frozen base with adapters (moss finetune, LoRA DPO)."""
    if cfg.lora_r > 0:
        from . import lora
        model, tokenizer = lora.build(cfg)
        if dist.main:
            trainable, total = lora.trainable_counts(model)
            print(f"LoRA r={cfg.lora_r}: training {trainable:,} of {total:,} parameters "
                  f"({100 * trainable / total:.2f}%)", file=sys.stderr, flush=True)
    else:
        tokenizer = _load_tokenizer(cfg)
        model = _build_model(cfg, tokenizer)
    model = model.to(dist.device)
    model.train()
    return model, tokenizer


class TokenLoss(torch.nn.Module):
    """The model plus its loss: summed cross-entropy over target tokens only.

    The output layer runs only where a label exists, which skips most of the
    vocabulary projection in SFT (prompts carry no loss). DDP and compile wrap
    this module, so gradient sync sees the whole computation.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wraps the model
        self.body = getattr(inner, "model", None)
        self.head = getattr(inner, "lm_head", None)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]
        if self.body is None or self.head is None:  # an architecture without the usual split
            logits = self.model(input_ids=ids, use_cache=False).logits[:, :-1]
            return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                   ignore_index=IGNORE, reduction="sum")
        # No KV cache: training never reads it, and filling it copies every layer's keys and values.
        hidden = self.body(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
        keep = targets != IGNORE
        logits = self.head(hidden[keep])
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def resolve_dtype(cfg: TrainConfig, dist: Dist, model, resumed: str | None) -> hardware.DtypeChoice:
    """The precision this run trains in: a resumed run keeps the one it began with (exact resume); under
    DDP rank 0 measures and every rank takes its choice, so all ranks compute alike."""
    if resumed and cfg.dtype == "auto":
        choice = hardware.DtypeChoice("auto", resumed, "as the run began (resumed)", device=dist.device.type)
        if dist.main:
            print(choice.line(), file=sys.stderr, flush=True)
        return choice
    workload = hardware.Workload.training(cfg.micro_batch_size * cfg.seq_len, cfg.seq_len, model.config)
    choice = hardware.choose_dtype(cfg.dtype, dist.device, workload, announce=dist.main) if dist.main else None
    if dist.world > 1:
        import torch.distributed as tdist
        box = [choice]
        tdist.broadcast_object_list(box, src=0)
        choice = box[0]
    return choice


def _loss_sum(net, ids: torch.Tensor, labels: torch.Tensor, autocast) -> torch.Tensor:
    with autocast():
        return net(ids, labels)


@torch.no_grad()
def evaluate(loss_model: TokenLoss, data: Dataset, cfg: TrainConfig, device, autocast) -> float:
    model = loss_model.model
    model.eval()
    total, count = 0.0, 0
    n = min(len(data), cfg.eval_batches * cfg.micro_batch_size)
    for start in range(0, n, cfg.micro_batch_size):
        indices = list(range(start, min(n, start + cfg.micro_batch_size)))
        ids, labels = data.batch(indices)
        total += float(_loss_sum(loss_model, ids.to(device), labels.to(device), autocast))
        count += data.target_count(indices)
    model.train()
    return total / max(1, count)


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Run a training stage; returns the final checkpoint folder.

    `stop_after` ends the process loop early (as a kill would), for tests.
    """
    dist = setup_distributed()
    run = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_model_and_tokenizer(cfg, dist)
    if cfg.lora_r > 0:
        from . import lora
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=True)
    start_step, resumed_dtype = 0, None
    sharded = cfg.strategy != "ddp" and dist.world > 1  # fsdp/zero2/zero3 (one process: nothing to shard)
    ckpt, trainer_state = None, None
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            verify_checkpoint(ckpt)
            if cfg.lora_r > 0:
                lora.load_adapter_weights(model, ckpt / "model")
            else:
                from safetensors.torch import load_file
                state = load_file(ckpt / "model" / "model.safetensors")
                missing, unexpected = model.load_state_dict(state, strict=False)
                if unexpected or [m for m in missing if "lm_head" not in m]:
                    raise CheckpointError(f"{ckpt}: weights do not match the model ({missing[:3]}, {unexpected[:3]})")
            trainer_state = torch.load(ckpt / STATE_FILE, weights_only=False)
            saved_strategy = trainer_state.get("strategy", "ddp")
            if saved_strategy != (cfg.strategy if sharded else "ddp"):
                raise CheckpointError(f"{ckpt} was saved by strategy={saved_strategy}; resume it with that strategy")
            if not sharded:  # a sharder restores its own optimizer state once it exists (below)
                optimizer.load_state_dict(trainer_state["optimizer"])
            start_step = trainer_state["step"]
            resumed_dtype = trainer_state.get("dtype")
            if dist.main:
                print(f"resuming from {ckpt} (step {start_step})", flush=True)
        elif dist.main:
            print(f"no checkpoint in {run / 'checkpoints'} yet: starting from step 0", flush=True)
    train_data = load_dataset(cfg, cfg.train, tokenizer, cfg.seed)
    val_data = load_dataset(cfg, cfg.val, tokenizer, cfg.seed) if cfg.val else None

    loss_model = TokenLoss(model)
    net = loss_model
    if dist.world > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(loss_model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    forward_model = net
    if cfg.compile:
        compiled.require_compiler(dist.device)
        if sharded or not compiled.compile_layers(loss_model.body):  # a sharder wraps the layers itself
            forward_model = torch.compile(net)
    choice = resolve_dtype(cfg, dist, model, resumed_dtype)
    if choice.dtype == "bf16":
        if cfg.lora_r > 0:
            lora.skip_input_casts(model)

        def autocast():
            return torch.autocast(dist.device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    metrics_path = run / "metrics.jsonl"
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "dtype_choice": choice.as_dict()},
                                                    indent=2) + "\n")
        _truncate_metrics(metrics_path, start_step)
    per_rank = cfg.batch_size // dist.world
    if per_rank * dist.world != cfg.batch_size or per_rank % min(cfg.micro_batch_size, per_rank):
        raise ValueError(f"batch_size {cfg.batch_size} must split evenly over {dist.world} processes "
                         f"and micro-batches of {cfg.micro_batch_size}")
    micro = min(cfg.micro_batch_size, per_rank)
    sharder = None
    if sharded:  # FSDP2 / DeepSpeed own the forward module, the optimizer and the update
        sharder = sharding.wrap(cfg, model, loss_model, dist.rank, micro, per_rank // micro, choice.dtype == "bf16")
        net = forward_model = sharder.net
        optimizer = sharder.optimizer
        if trainer_state is not None:
            sharder.load_shards(ckpt, trainer_state)
    bar = _progress(cfg, start_step) if dist.main else None
    t0, tokens_seen, window_tokens, window_t = time.time(), 0, 0, time.time()
    done = start_step
    for step in range(start_step, cfg.max_steps):
        if stop_after is not None and step >= start_step + stop_after:
            break
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        base = step * cfg.batch_size
        global_indices = [train_data.index(base + i) for i in range(cfg.batch_size)]
        targets = train_data.target_count(global_indices)
        mine = global_indices[dist.rank * per_rank:(dist.rank + 1) * per_rank]
        loss_total = torch.zeros((), device=dist.device)
        chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
        for k, chunk in enumerate(chunks):
            ids, labels = train_data.batch(chunk)
            last = k == len(chunks) - 1
            if sharder is not None:
                sync = sharder.accumulating(last)
            else:
                sync = contextlib.nullcontext() if (dist.world == 1 or last) else net.no_sync()
            with sync:
                loss_sum = _loss_sum(forward_model, ids.to(dist.device), labels.to(dist.device), autocast)
                # Normalise by the global target count; DDP (and FSDP, ZeRO) average gradients, so scale by world.
                scaled = loss_sum * dist.world / max(1, targets)
                sharder.backward(scaled) if sharder is not None else scaled.backward()
            loss_total += loss_sum.detach()
            tokens_seen += int(ids.numel())
            window_tokens += int(ids.numel())
        if sharder is not None:
            sharder.step(cfg.grad_clip)
        else:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(loss_total)
        loss = float(loss_total) / max(1, targets)
        done = step + 1
        val_loss = None  # a sharded model runs forward on every rank together
        if val_data is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps) and (dist.main or sharded):
            val_loss = evaluate(loss_model, val_data, cfg, dist.device, autocast)
        if dist.main:
            row = {"step": done, "loss": loss, "lr": lr}
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                now = time.time()
                row["tokens_per_s"] = window_tokens * dist.world / max(1e-9, now - window_t)
                row["dtype"] = choice.dtype
                window_tokens, window_t = 0, now
            if val_loss is not None:
                row["val_loss"] = val_loss
            _append_metrics(metrics_path, row)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{loss:.3f}"}
                if "tokens_per_s" in row:
                    post["tok/s"] = f"{row['tokens_per_s']:.0f}"
                if "val_loss" in row:
                    post["val"] = f"{row['val_loss']:.3f}"
                bar.set_postfix(post, refresh=False)
        if done % cfg.save_every == 0 and done < cfg.max_steps and (dist.main or sharded):
            save_training_checkpoint(run, done, model, tokenizer, optimizer, cfg, cfg.keep_checkpoints, choice.dtype,
                                     sharder=sharder)
    if bar is not None:
        bar.close()
    final = run / "final"
    if sharder is not None and done == cfg.max_steps:
        model = sharder.plain_model()  # gathered by every rank; the full unsharded model on rank 0
    if dist.main and done == cfg.max_steps:
        metadata = {"plugins": cfg.plugins, "stage": cfg.stage, "steps": cfg.max_steps,
                    "train_dtype": choice.dtype, "train_dtype_choice": choice.line(),
                    "train_seconds": round(time.time() - t0, 1), "tokens_seen": tokens_seen * dist.world}
        if cfg.lora_r > 0:
            lora.save_adapter(model, tokenizer, final, base=cfg.init, preset=cfg.protocol, metadata={
                **metadata, "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets,
                                     "protocol_tokens": cfg.add_protocol_tokens}})
        else:
            modellib.save_checkpoint(model, tokenizer, final, preset=cfg.protocol, metadata=metadata)
        plot_metrics(metrics_path, run / "loss.png", title=f"{cfg.stage} loss")
    if dist.world > 1:
        import torch.distributed as tdist
        tdist.barrier()
        tdist.destroy_process_group()
    return final


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.max_steps, initial=start, desc=cfg.stage, unit="step", dynamic_ncols=True)


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows after the checkpoint so the curve continues seamlessly."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics: Path, out_png: Path, title: str = "loss") -> Path | None:
    """Loss curve (train, and val where measured) as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train", linewidth=1)
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
