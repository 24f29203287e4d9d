"""Sharded data parallelism for the training loop: FSDP2 and DeepSpeed ZeRO-2/3.

`wrap()` turns the loop's `TokenLoss` into a `Sharder`: the module to run
forward, the optimizer whose learning rate the loop sets each step, and the
strategy's own backward / accumulation / clipping / step. Checkpoints stay plain
HF folders: the full weights are gathered to rank 0 and written as
`model/model.safetensors`; optimizer state goes into the same atomic folder
(FSDP2: one full, name-keyed state dict in trainer_state.pt; DeepSpeed: its own
per-rank ZeRO partitions under `deepspeed/`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as tdist

from ..model import CheckpointError, write_manifest
from ..paths import atomic_dir

DS_FOLDER = "deepspeed"  # DeepSpeed's per-rank optimizer partitions inside a checkpoint
DS_TAG = "state"


class Sharder:
    """What the loop needs from a sharding strategy (see FSDPSharder, DeepSpeedSharder)."""

    strategy: str
    net: torch.nn.Module        # run forward on this
    optimizer: torch.optim.Optimizer  # the loop sets param_groups' lr on it

    def __init__(self, model, loss_model, rank: int) -> None:
        self.model, self.loss_model, self.rank = model, loss_model, rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, grad_clip: float) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full fp32 weights of the HF model on rank 0 (None elsewhere); every rank must call it."""
        raise NotImplementedError

    def optimizer_state(self) -> Any:
        """A full optimizer state for trainer_state.pt (rank 0), or None when save_shards writes it."""
        return None

    def save_shards(self, folder: Path) -> None:
        """Per-rank files into the (shared) checkpoint temp folder; every rank calls it."""

    def load_shards(self, folder: Path, trainer_state: dict) -> None:
        """Restore the optimizer state saved by optimizer_state/save_shards; every rank calls it."""

    def plain_model(self):
        """An unsharded copy of the HF model with the trained weights on rank 0 (None elsewhere)."""
        state = self.full_state_dict()
        if not self.main:
            return None
        from transformers import AutoModelForCausalLM

        # A fresh fp32 model of the same config; the gathered weights replace its random ones.
        plain = AutoModelForCausalLM.from_config(copy.deepcopy(self.model.config), dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "lm_head" not in m]:
            raise RuntimeError(f"gathered weights do not match the model ({missing[:3]}, {unexpected[:3]})")
        plain.tie_weights()
        if getattr(self.model, "generation_config", None) is not None:
            plain.generation_config = copy.deepcopy(self.model.generation_config)
        return plain


# ---------------------------------------------------------------- FSDP2

class FSDPSharder(Sharder):
    """FSDP2: each decoder layer is its own shard group, then the root (embeddings, norm, head)."""

    strategy = "fsdp"

    def __init__(self, cfg, model, loss_model, rank: int) -> None:
        from torch.distributed.fsdp import fully_shard

        super().__init__(model, loss_model, rank)
        for layer in _decoder_layers(model):
            fully_shard(layer)
        # The root is TokenLoss, not the HF model: TokenLoss calls model.model and lm_head directly,
        # so only its forward hook gathers the root's parameters (embeddings tied with the head).
        fully_shard(loss_model)
        self.net = loss_model
        # Parameters are DTensors now; AdamW steps each rank's shard (foreach: fused has no DTensor path).
        self.optimizer = torch.optim.AdamW(list(model.parameters()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                           weight_decay=cfg.weight_decay, foreach=True)

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        # Reduce-scatter gradients only on the last micro-batch of a step (FSDP2's no_sync).
        self.loss_model.set_requires_gradient_sync(last)
        try:
            yield
        finally:
            self.loss_model.set_requires_gradient_sync(True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # FSDP2 averages gradients over ranks, as DDP does

    def step(self, grad_clip: float) -> None:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.float() for k, v in state.items()} if self.main else None

    def optimizer_state(self) -> Any:
        # One full, parameter-name-keyed state: small at our sizes, and it does not tie a resume
        # to the number of ranks that saved it (per-rank DTensor shards would).
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(self.model, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.main else None

    def load_shards(self, folder: Path, trainer_state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, trainer_state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))


def _decoder_layers(model) -> list[torch.nn.Module]:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"strategy=fsdp: {type(model).__name__} has no model.layers to shard")
    return list(layers)


# ---------------------------------------------------------------- DeepSpeed

def import_deepspeed(strategy: str):
    """DeepSpeed is an optional extra; on a machine without CUDA it runs on its CPU accelerator."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed is first imported
    try:
        import deepspeed
        import deepspeed.ops
    except ImportError:
        raise ValueError(f"strategy={strategy} needs DeepSpeed: pip install 'mosslm[deepspeed]'") from None
    if not torch.cuda.is_available() and os.environ.get("MOSSLM_DEEPSPEED_SHM", "0") != "1":
        # On CPU DeepSpeed would JIT-compile its shared-memory all-reduce kernel first (about a minute,
        # and a C++ toolchain); marking it incompatible makes it use the gloo group as it is.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def deepspeed_config(cfg, micro: int, accumulation: int, bf16: bool) -> dict:
    """Our settings in DeepSpeed's terms; `cfg.deepspeed` is merged over them (nested dicts key by key)."""
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": 3 if cfg.strategy == "zero3" else 2},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # our torch AdamW as the client optimizer
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    return _merge(ours, cfg.deepspeed or {})


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeedSharder(Sharder):
    """DeepSpeed ZeRO-2 (optimizer + gradient partitions) or ZeRO-3 (parameters too)."""

    def __init__(self, cfg, model, loss_model, rank: int, micro: int, accumulation: int, bf16: bool) -> None:
        deepspeed = import_deepspeed(cfg.strategy)
        super().__init__(model, loss_model, rank)
        self.strategy = cfg.strategy
        deepspeed.init_distributed(dist_backend=tdist.get_backend())  # reuses the loop's process group
        # torch's AdamW as a client optimizer: DeepSpeed's own CPU Adam needs a compiled extension,
        # and this keeps the update rule the one a single process uses.
        client = torch.optim.AdamW(list(model.parameters()), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                   weight_decay=cfg.weight_decay, foreach=True)
        config = deepspeed_config(cfg, micro, accumulation, bf16)
        self.engine, zero_optimizer, _, _ = deepspeed.initialize(model=loss_model, optimizer=client, config=config)
        self.net = self.engine
        self.optimizer = zero_optimizer  # its param_groups are the client's: the loop's lr lands there

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed divides by gradient_accumulation_steps itself; the loop's loss is already normalised
        # by the global target count, so that scaling is turned off. engine.step() after every micro-batch
        # is DeepSpeed's protocol: it updates (clips, steps) only at the accumulation boundary.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self, grad_clip: float) -> None:
        pass  # done by engine.step() at the boundary; clipping by gradient_clipping in the config

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.engine.zero_optimization_partition_weights():  # ZeRO-3: gather layer by layer to rank 0
            state = self.engine._zero3_consolidated_16bit_state_dict()
            if state is None:
                return None
            prefix = "model."  # engine.module is TokenLoss; its `model` is the HF model
            return {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        # ZeRO-2: every rank holds the full module weights (bf16 when DeepSpeed's bf16 is on).
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()} if self.main else None

    def save_shards(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder / DS_FOLDER), tag=DS_TAG, save_latest=False)

    def load_shards(self, folder: Path, trainer_state: dict) -> None:
        path, _ = self.engine.load_checkpoint(str(folder / DS_FOLDER), tag=DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"{folder}: DeepSpeed found no state under {DS_FOLDER}/{DS_TAG}")


# ---------------------------------------------------------------- entry points

def wrap(cfg, model, loss_model, rank: int, micro: int, accumulation: int, bf16: bool) -> Sharder:
    """Shard `loss_model` (a TokenLoss around `model`) for cfg.strategy (fsdp | zero2 | zero3)."""
    if cfg.lora_r > 0:
        raise ValueError(f"strategy {cfg.strategy} with lora_r > 0 is not supported yet")
    if cfg.strategy == "fsdp":
        return FSDPSharder(cfg, model, loss_model, rank)
    if cfg.strategy in ("zero2", "zero3"):
        return DeepSpeedSharder(cfg, model, loss_model, rank, micro, accumulation, bf16)
    raise ValueError(f"no sharder for strategy {cfg.strategy!r}")


def save_checkpoint(final: Path, sharder: Sharder, tokenizer, trainer_state: dict, state_file: str) -> None:
    """Write one checkpoint folder from all ranks; rank 0 renames it into place once it is complete.

    Every rank must call this (gathering the weights is collective). Rank 0 makes the temp folder and
    tells the others its name; each writes its shards; after a barrier rank 0 adds the HF model, the
    trainer state and the manifest, and the atomic rename publishes it.
    """
    plain = sharder.plain_model()
    optimizer = sharder.optimizer_state()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_dir(final)) if sharder.main else None
        box = [str(tmp) if tmp is not None else None]
        tdist.broadcast_object_list(box, src=0)
        sharder.save_shards(Path(box[0]))
        tdist.barrier()  # every rank's files are in the folder
        if sharder.main:
            plain.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            torch.save({**trainer_state, "optimizer": optimizer}, tmp / state_file)
            write_manifest(tmp)
    tdist.barrier()  # the rename is done before any rank goes on (or reads it)

