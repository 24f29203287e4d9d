"""Preference training (`moss train dpo`): DPO with the sigmoid or IPO loss, one explicit loop like loop.py.

A pair is a prompt (a conversation prefix) and two answers to its last message
(mosslm/data/preferences.py reads them: `moss data export --format dpo` files
and any JSONL of prompt/chosen/rejected records in our OpenAI message format).
An answer's log-probability is summed over the final turn's tokens under the
same loss masks as SFT (`loss_on`: by default thoughts, commands and reply;
never the tool's Results, which the model does not write).

The reference is the initial policy: `precomputed` scores every pair once
before training and caches the numbers in the run folder (no second model in
memory; a resumed run reads the cache); `model` keeps a frozen copy (with LoRA:
the base with the adapter switched off, no copy). Checkpoints, resume, metrics
and the progress bar are loop.py's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import model as modellib
from ..data.preferences import Preference, read_preference
from ..model import CheckpointError, verify_checkpoint
from ..paths import atomic_file
from ..protocol import ProtocolError
from .config import TrainConfig
from .data import IGNORE, Dataset, SftExample, conversation_example
from .loop import (STATE_FILE, _append_metrics, _progress, _truncate_metrics, build_model_and_tokenizer,
                   latest_checkpoint, learning_rate, plot_metrics, resolve_dtype, save_training_checkpoint,
                   setup_distributed)

REFERENCE_FILE = "reference_logps.pt"


class DpoError(ValueError):
    pass


# ---------------------------------------------------------------- data

def read_pairs(paths: list[str]) -> list[Preference]:
    """Every preference record of these JSONL files; a bad line stops with its file, line and reason."""
    pairs = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise DpoError(f"preference data not found: {p}")
        for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                pairs.append(read_preference(json.loads(line)))
            except json.JSONDecodeError as e:
                raise DpoError(f"{p}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
            except ProtocolError as e:
                raise DpoError(f"{p}:{number}: not a usable preference pair: {e}") from None
    if not pairs:
        raise DpoError(f"no preference pairs in {paths}")
    return pairs


class _FinalTurnOnly:
    """A conversation whose earlier turns carry no loss: only the answer being compared is scored."""

    def __init__(self, conv) -> None:
        self.conv = conv

    def segments(self) -> list[tuple[str, str]]:
        segments = self.conv.segments()
        cut = len(segments) - len(self.conv.turns[-1].segments())
        return [(text, part if i >= cut else "context") for i, (text, part) in enumerate(segments)]


def pair_examples(pairs: list[Preference], tokenizer, loss_on: list[str],
                  seq_len: int) -> tuple[list[SftExample], list[SftExample]]:
    """(chosen, rejected) token examples, aligned; a pair with nothing left to score after truncation is an error."""
    chosen, rejected = [], []
    for n, pair in enumerate(pairs, 1):
        c = conversation_example(_FinalTurnOnly(pair.conversation("chosen")), tokenizer, loss_on, seq_len)
        r = conversation_example(_FinalTurnOnly(pair.conversation("rejected")), tokenizer, loss_on, seq_len)
        if c is None or r is None:
            raise DpoError(f"pair {n}: no {'/'.join(loss_on)} tokens of the answer fit in seq_len={seq_len} "
                           "(raise seq_len or drop the pair)")
        if c.input_ids == r.input_ids:
            raise DpoError(f"pair {n}: chosen and rejected render to the same tokens")
        chosen.append(c)
        rejected.append(r)
    return chosen, rejected


# ---------------------------------------------------------------- log-probs and losses

class SequenceLogProbs(torch.nn.Module):
    """Per-row sums of the target tokens' log-probabilities; the head runs only where a label exists."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = getattr(inner, "model", None)
        self.head = getattr(inner, "lm_head", None)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]
        keep = targets != IGNORE
        rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(targets)[keep]
        if self.body is None or self.head is None:
            logits = self.model(input_ids=ids).logits[:, :-1][keep]
        else:
            logits = self.head(self.body(input_ids=ids).last_hidden_state[:, :-1][keep])
        token_logps = torch.gather(F.log_softmax(logits.float(), -1), 1, targets[keep].unsqueeze(1)).squeeze(1)
        return torch.zeros(ids.shape[0], device=ids.device).index_add(0, rows, token_logps)


def dpo_loss(kind: str, beta: float, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the (chosen, rejected) implicit rewards beta * (log pi - log ref)."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    margin = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif kind == "ipo":  # squared distance to the target margin 1/(2 beta): it cannot push the margin to infinity
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise DpoError(f"dpo_loss must be sigmoid or ipo, got {kind!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _joint_batch(chosen: Dataset, rejected: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows in one right-padded batch: one forward pass scores both."""
    c_ids, c_labels = chosen.batch(indices)
    r_ids, r_labels = rejected.batch(indices)
    width = max(c_ids.shape[1], r_ids.shape[1])
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    return (torch.cat([pad(c_ids, 0), pad(r_ids, 0)]), torch.cat([pad(c_labels, IGNORE), pad(r_labels, IGNORE)]))


def _score(scorer: SequenceLogProbs, chosen: Dataset, rejected: Dataset, indices: list[int], device,
           autocast) -> tuple[torch.Tensor, torch.Tensor]:
    ids, labels = _joint_batch(chosen, rejected, indices)
    with autocast():
        logps = scorer(ids.to(device), labels.to(device))
    return logps[:len(indices)], logps[len(indices):]


# ---------------------------------------------------------------- the reference

def _fingerprint(cfg: TrainConfig, chosen: list[SftExample], rejected: list[SftExample]) -> str:
    """What the cached reference numbers depend on: the init model and the exact scored tokens."""
    h = hashlib.sha256(str(Path(cfg.init).resolve()).encode())
    for e in chosen + rejected:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()


@torch.no_grad()
def precompute_reference(scorer: SequenceLogProbs, chosen: Dataset, rejected: Dataset, micro: int, device,
                         autocast, lora: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The initial policy's log-probs of every pair, in eval mode (no dropout), adapters off under LoRA."""
    model = scorer.model
    model.eval()
    out_c, out_r = torch.zeros(len(chosen)), torch.zeros(len(chosen))
    off = model.disable_adapter() if lora else contextlib.nullcontext()
    with off:
        for start in range(0, len(chosen), micro):
            indices = list(range(start, min(len(chosen), start + micro)))
            c, r = _score(scorer, chosen, rejected, indices, device, autocast)
            out_c[indices], out_r[indices] = c.float().cpu(), r.float().cpu()
    model.train()
    return out_c, out_r


def load_or_compute_reference(run: Path, cfg: TrainConfig, scorer, chosen: Dataset, rejected: Dataset, device,
                              autocast, dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached in the run folder (atomically), keyed by a fingerprint: a resumed run never recomputes."""
    path = run / REFERENCE_FILE
    key = _fingerprint(cfg, chosen.examples, rejected.examples)
    if path.exists():
        cached = torch.load(path, weights_only=True)
        if cached.get("fingerprint") == key:
            return cached["chosen"], cached["rejected"]
        if dist.main:
            print(f"{path}: made for other data or another init model: recomputing", file=sys.stderr, flush=True)
    ref_c, ref_r = precompute_reference(scorer, chosen, rejected, cfg.micro_batch_size, device, autocast,
                                        lora=cfg.lora_r > 0)
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb", encoding=None) as f:
            torch.save({"fingerprint": key, "chosen": ref_c, "rejected": ref_r}, f)
    return ref_c, ref_r


# ---------------------------------------------------------------- the loop

def _init_metadata(cfg: TrainConfig) -> dict:
    meta = Path(cfg.init) / modellib.METADATA_FILE
    return json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else {}


def _check(cfg: TrainConfig) -> None:
    cfg.validate()
    if cfg.stage != "dpo":
        raise DpoError(f"run_dpo runs stage dpo, not {cfg.stage!r}")
    if not cfg.init:
        raise DpoError("DPO starts from a trained model: set init= (a checkpoint folder)")
    if not Path(cfg.init).exists():
        raise DpoError(f"init model not found: {cfg.init}")


def run_dpo(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Preference-train `cfg.init` on the pairs in `cfg.train`; returns the final checkpoint folder.

    `stop_after` ends the loop early (as a kill would), for tests.
    """
    _check(cfg)
    dist = setup_distributed()
    run = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model, tokenizer = build_model_and_tokenizer(cfg, dist)
    lora = None
    if cfg.lora_r > 0:  # a frozen base with adapters; the reference is the base with the adapter off
        from . import lora
    pairs = read_pairs(cfg.train)
    c_examples, r_examples = pair_examples(pairs, tokenizer, cfg.loss_on, cfg.seq_len)
    chosen = Dataset(examples=c_examples, seed=cfg.seed)
    rejected = Dataset(examples=r_examples, seed=cfg.seed)
    scorer = SequenceLogProbs(model)

    resumed_state = None
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            verify_checkpoint(ckpt)
            resumed_state = torch.load(ckpt / STATE_FILE, weights_only=False)
    choice = resolve_dtype(cfg, dist, model, resumed_state.get("dtype") if resumed_state else None)
    if choice.dtype == "bf16":
        def autocast():
            return torch.autocast(dist.device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    # The reference comes from the initial weights, before any checkpoint is loaded.
    reference_model = None
    if cfg.dpo_reference == "precomputed":
        ref_c_all, ref_r_all = load_or_compute_reference(run, cfg, scorer, chosen, rejected, dist.device, autocast,
                                                         dist)
    elif lora is None:
        reference_model = copy.deepcopy(model).eval().requires_grad_(False)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    start_step = 0
    if resumed_state is not None:
        if lora is not None:
            lora.load_adapter_weights(model, ckpt / "model")
        else:
            from safetensors.torch import load_file
            missing, unexpected = model.load_state_dict(load_file(ckpt / "model" / "model.safetensors"), strict=False)
            if unexpected or [m for m in missing if "lm_head" not in m]:
                raise CheckpointError(f"{ckpt}: weights do not match the model ({missing[:3]}, {unexpected[:3]})")
        optimizer.load_state_dict(resumed_state["optimizer"])
        start_step = resumed_state["step"]
        if dist.main:
            print(f"resuming from {ckpt} (step {start_step})", flush=True)
    elif resume and dist.main:
        print(f"no checkpoint in {run / 'checkpoints'} yet: starting from step 0", flush=True)

    net = scorer
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(scorer, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    ref_scorer = SequenceLogProbs(reference_model) if reference_model is not None else None

    def reference(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.dpo_reference == "precomputed":
            return ref_c_all[indices].to(dist.device), ref_r_all[indices].to(dist.device)
        with torch.no_grad():
            if ref_scorer is not None:
                return _score(ref_scorer, chosen, rejected, indices, dist.device, autocast)
            model.eval()  # the base alone, without LoRA dropout: as the precomputed numbers are made
            with model.disable_adapter():
                out = _score(scorer, chosen, rejected, indices, dist.device, autocast)
            model.train()
            return out

    metrics_path = run / "metrics.jsonl"
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "dtype_choice": choice.as_dict(),
                                                     "pairs": len(pairs)}, indent=2) + "\n")
        _truncate_metrics(metrics_path, start_step)
    per_rank = cfg.batch_size // dist.world
    if per_rank * dist.world != cfg.batch_size:
        raise DpoError(f"batch_size {cfg.batch_size} must split evenly over {dist.world} processes")
    micro = min(cfg.micro_batch_size, per_rank)
    bar = _progress(cfg, start_step) if dist.main else None
    t0, done = time.time(), start_step
    for step in range(start_step, cfg.max_steps):
        if stop_after is not None and step >= start_step + stop_after:
            break
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        global_indices = [chosen.index(step * cfg.batch_size + i) for i in range(cfg.batch_size)]
        mine = global_indices[dist.rank * per_rank:(dist.rank + 1) * per_rank]
        # loss sum, chosen/rejected reward sums, correctly ordered pairs
        totals = torch.zeros(4, device=dist.device)
        chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
        for k, chunk in enumerate(chunks):
            ref_c, ref_r = reference(chunk)
            sync = contextlib.nullcontext() if (dist.world == 1 or k == len(chunks) - 1) else net.no_sync()
            with sync:
                pol_c, pol_r = _score(net, chosen, rejected, chunk, dist.device, autocast)
                losses, reward_c, reward_r = dpo_loss(cfg.dpo_loss, cfg.dpo_beta, pol_c, pol_r, ref_c, ref_r)
                (losses.sum() * dist.world / cfg.batch_size).backward()  # the mean over the step's pairs
            totals += torch.stack([losses.detach().sum(), reward_c.sum(), reward_r.sum(),
                                   (reward_c > reward_r).float().sum()])
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.all_reduce(totals)
        loss, chosen_reward, rejected_reward, right = (float(v) / cfg.batch_size for v in totals)
        done = step + 1
        if dist.main:
            row = {"step": done, "loss": loss, "lr": lr, "reward_margin": chosen_reward - rejected_reward,
                   "reward_accuracy": right, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward}
            _append_metrics(metrics_path, row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"loss": f"{loss:.3f}", "acc": f"{right:.2f}",
                                 "margin": f"{row['reward_margin']:.2f}"}, refresh=False)
        if done % cfg.save_every == 0 and done < cfg.max_steps and dist.main:
            save_training_checkpoint(run, done, model, tokenizer, optimizer, cfg, cfg.keep_checkpoints, choice.dtype)
    if bar is not None:
        bar.close()
    final = run / "final"
    if dist.main and done == cfg.max_steps:
        init_meta = _init_metadata(cfg)
        metadata = {"plugins": cfg.plugins or init_meta.get("plugins", []), "stage": "dpo", "steps": cfg.max_steps,
                    "dpo": {"loss": cfg.dpo_loss, "beta": cfg.dpo_beta, "reference": cfg.dpo_reference,
                            "pairs": len(pairs), "init": str(Path(cfg.init).resolve())},
                    "train_dtype": choice.dtype, "train_seconds": round(time.time() - t0, 1)}
        if lora is not None:  # the adapter merged into the base: an ordinary checkpoint
            model = model.merge_and_unload()
            metadata["lora"] = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
        modellib.save_checkpoint(model, tokenizer, final, preset=init_meta.get("protocol") or cfg.protocol,
                                 metadata=metadata)
        plot_metrics(metrics_path, run / "loss.png", title=f"dpo ({cfg.dpo_loss}) loss")
    if dist.world > 1:
        import torch.distributed as tdist
        tdist.barrier()
        tdist.destroy_process_group()
    return final
