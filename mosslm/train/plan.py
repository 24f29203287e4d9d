"""`moss train plan`: how much memory a training run needs per device, before it runs.

Pure arithmetic over the model's dimensions (nothing is allocated). The accounting follows what our loop
(mosslm/train/loop.py) and LoRA set-up (mosslm/train/lora.py) really hold: fp32 master weights, fp32 gradients,
fused AdamW's two fp32 states, bf16 autocast (which keeps bf16 copies of the weights for backward), no
activation checkpointing (QLoRA excepted: prepare_model_for_kbit_training turns it on), and TokenLoss, which runs
the vocabulary projection only at target positions. The per-layer activation terms were read off autograd's saved
tensors for a Llama decoder on transformers' sdpa attention; docs/memory-planner.md has the formulas and the
measured-vs-estimated check of tests/test_plan.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("ddp", "zero2", "fsdp", "zero3", "lora", "qlora")
DEFAULT_VOCAB = 32000
PRESET_VOCAB = {"moss-16b": 106072}       # MOSS's own tokenizer: with it the preset is ~16B parameters
DEFAULT_LORA_R = 8
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
QUANT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 + double-quantised absmax (8 bit per 64, fp32 per 256 blocks)
ZERO2_BUCKET = 5e8                        # DeepSpeed's default reduce_bucket_size, in elements
GiB = 1024 ** 3
CPU_HEADROOM = 0.30                       # glibc's heap keeps freed tensors: measured +23-30% RSS over live memory
SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


class PlanError(ValueError):
    """Input the planner cannot work with; the message says what to change."""


@dataclass(frozen=True)
class ModelDims:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        n = sum(a * b for a, b in self.linear_shapes().values())
        if self.qkv_bias:
            n += self.q_dim + 2 * self.kv_dim
        if self.o_bias:
            n += self.hidden
        if self.mlp_bias:
            n += 2 * self.intermediate + self.hidden
        return n

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def total_params(self) -> int:
        return self.layers * self.layer_linear_params + self.embed_params + self.head_params + self.norm_params

    @property
    def projection_params(self) -> int:
        """Weights that run as matmuls (autocast casts these): every decoder linear and the output layer."""
        return self.layers * self.layer_linear_params + self.vocab * self.hidden


@dataclass(frozen=True)
class Setup:
    strategy: str = "ddp"
    gpus: int = 1
    micro_batch: int = 1
    seq_len: int = 2048
    dtype: str = "bf16"                  # bf16 = fp32 master weights + bf16 autocast, as our loop runs it
    lora_r: int = DEFAULT_LORA_R
    lora_targets: tuple[str, ...] = ATTENTION + MLP
    lora_dropout: float = 0.05
    checkpointing: bool = False          # activation checkpointing (our loop does not; QLoRA always does)
    headroom: float = 0.15               # fraction of device memory kept free (allocator slack, CUDA context)
    device: str = "cuda"                 # cuda: dropout keeps a 1-byte mask; cpu: a mask in the input's dtype

    @property
    def lora(self) -> bool:
        return self.strategy in ("lora", "qlora")

    @property
    def mixed(self) -> bool:
        return self.dtype == "bf16" or self.strategy == "qlora"

    @property
    def uses_checkpointing(self) -> bool:
        return self.checkpointing or self.strategy == "qlora"


@dataclass
class Estimate:
    """Bytes per device, by component; `peak` is the high-water mark of one training step."""
    strategy: str
    params: float
    grads: float
    optimizer: float
    activations: float
    other: float
    peak: float
    trainable: int

    def fits(self, device_bytes: float, headroom: float) -> bool:
        return self.peak <= device_bytes * (1 - headroom)


# ---------------------------------------------------------------- the model

def dims_from_config(config: Any, name: str = "") -> ModelDims:
    """ModelDims from a transformers config object or a plain dict of its fields."""
    fields = config if isinstance(config, dict) else config.to_dict()
    get = fields.get
    kind = get("model_type", "llama")
    if kind not in SUPPORTED_TYPES:
        raise PlanError(f"model_type {kind!r} is not a Llama-family decoder; the planner knows "
                        f"{', '.join(SUPPORTED_TYPES)}")
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size") if not get(k)]
    if missing:
        raise PlanError(f"model config lacks {', '.join(missing)}")
    heads = int(get("num_attention_heads"))
    hidden = int(get("hidden_size"))
    dims = ModelDims(name=name or kind, hidden=hidden, intermediate=int(get("intermediate_size")),
                     layers=int(get("num_hidden_layers")), heads=heads,
                     kv_heads=int(get("num_key_value_heads") or heads),
                     head_dim=int(get("head_dim") or hidden // heads), vocab=int(get("vocab_size")),
                     tied=bool(get("tie_word_embeddings", False)),
                     qkv_bias=bool(get("attention_bias", False)) or kind == "qwen2",
                     o_bias=bool(get("attention_bias", False)), mlp_bias=bool(get("mlp_bias", False)))
    if min(dims.hidden, dims.intermediate, dims.layers, dims.heads, dims.kv_heads, dims.vocab) < 1:
        raise PlanError("model dimensions must all be >= 1")
    if dims.heads % dims.kv_heads:
        raise PlanError(f"num_attention_heads {dims.heads} must be a multiple of num_key_value_heads {dims.kv_heads}")
    return dims


def preset_dims(preset: str, vocab_size: int | None = None) -> ModelDims:
    from ..model import PRESETS, model_config

    if preset not in PRESETS:
        raise PlanError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    vocab = vocab_size or PRESET_VOCAB.get(preset, DEFAULT_VOCAB)
    return dims_from_config(model_config(preset, vocab_size=vocab), name=preset)


def lora_params(dims: ModelDims, r: int, targets: tuple[str, ...]) -> int:
    shapes = dims.linear_shapes()
    unknown = set(targets) - set(shapes)
    if unknown:
        raise PlanError(f"unknown LoRA target(s) {sorted(unknown)}; known: {', '.join(shapes)}")
    return dims.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


# ---------------------------------------------------------------- activations

def layer_activation_bytes(dims: ModelDims, setup: Setup) -> float:
    """Bytes one decoder layer keeps for backward, per token (no checkpointing).

    Saved tensors, fp32 run: each RMSNorm keeps its input and normalised value (2h) and its output once as the
    projections' input (h); attention keeps rotated q, k, v, the output and the log-sum-exp (sdpa/flash); the
    MLP keeps gate, silu(gate), up and their product. Under bf16 autocast the norms stay fp32 and every
    projection keeps its own bf16 cast of its input; matmul outputs are bf16."""
    h, kv, i, a = dims.hidden, dims.kv_dim, dims.intermediate, dims.heads
    q = dims.q_dim
    c = 2 if setup.mixed else 4                      # bytes of a matmul output
    core = c * (2 * q + 2 * kv) + 4 * a              # rotated q, k, v, attention output; fp32 log-sum-exp
    if not setup.lora:
        norms = 2 * (4 * h + 4 * h + 4)              # input, normalised, rsqrt; both norms
        inputs = (3 * 2 * h + 2 * 2 * h) if setup.mixed else (4 * h + 4 * h)  # projection inputs
        return norms + inputs + core + 4 * c * i
    # LoRA: frozen norms and projections keep nothing for their weights, the adapters keep their inputs.
    norms = 2 * (4 * h + 4)
    shapes = dims.linear_shapes()
    r = setup.lora_r
    per_target = 0.0
    if setup.lora_dropout > 0:                        # dropout keeps a mask and its output per adapter
        mask = 1 if setup.device == "cuda" else 4
        per_target = sum((mask + c) * shapes[t][0] + c * r for t in setup.lora_targets)
    elif setup.mixed:                                 # each adapter keeps its own bf16 cast of the input
        per_target = sum(2 * shapes[t][0] + 2 * r for t in setup.lora_targets)
    else:                                             # adapters share the fp32 input the layer already has
        t = set(setup.lora_targets)
        per_target = (4 * h * bool(t & {"q_proj", "k_proj", "v_proj"}) + 4 * h * bool(t & {"gate_proj", "up_proj"})
                      + 4 * i * ("down_proj" in t) + 4 * r * len(t))
    return norms + core + 3 * c * i + per_target


def head_activation_bytes(dims: ModelDims, setup: Setup) -> float:
    """Bytes per target token at the output: final norm, the gathered hidden rows, fp32 log-softmax, targets."""
    norm = (4 * dims.hidden + 4) + (0 if setup.lora else 4 * dims.hidden)
    gathered = 0 if setup.lora else (2 if setup.mixed else 4) * dims.hidden
    return norm + gathered + 4 * dims.vocab + 8 + 8   # + the input ids


def activation_bytes(dims: ModelDims, setup: Setup, micro_batch: int | None = None) -> tuple[float, float]:
    """(activations kept for backward, transient at the start of backward) for one micro-batch.
    Every position is taken as a target (pretraining); SFT's masked prompts only make the head smaller."""
    tokens = (micro_batch or setup.micro_batch) * setup.seq_len
    per_layer = layer_activation_bytes(dims, setup)
    if setup.uses_checkpointing:  # only each layer's input survives; one layer is recomputed at a time
        layer_bytes = dims.layers * 4 * dims.hidden + per_layer
    else:
        layer_bytes = dims.layers * per_layer
    rope = 2 * setup.seq_len * dims.head_dim * 4 / tokens
    kept = tokens * (layer_bytes + head_activation_bytes(dims, setup) + rope)
    transient = tokens * dims.vocab * (8 + (2 if setup.mixed else 0))  # grads of log-probs and logits
    return kept, transient


def kv_cache_bytes(dims: ModelDims, batch: int, context: int, bytes_per: int = 2) -> float:
    """Inference KV cache: a key and a value per layer, kv head and position."""
    return 2.0 * dims.layers * dims.kv_dim * batch * context * bytes_per


# ---------------------------------------------------------------- the estimate

def estimate(dims: ModelDims, setup: Setup, micro_batch: int | None = None) -> Estimate:
    if setup.strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {setup.strategy!r}; known: {', '.join(STRATEGIES)}")
    if setup.gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {setup.gpus}")
    mb = micro_batch or setup.micro_batch
    if mb < 1 or setup.seq_len < 1:
        raise PlanError("micro-batch and seq_len must be >= 1")
    n, total = setup.gpus, dims.total_params
    cast = 2 * dims.projection_params if setup.mixed else 0  # autocast's bf16 weight copies, kept for backward
    other = 0.0
    if setup.lora:
        trainable = lora_params(dims, setup.lora_r, setup.lora_targets)
        if setup.strategy == "qlora":  # NF4 projections; embeddings, norms, head in fp32 (prepare_model_for_kbit)
            quantised = dims.layers * dims.layer_linear_params
            params = (quantised * QUANT_BYTES + 4 * (total - quantised) + 4 * trainable
                      + 2 * dims.vocab * dims.hidden)  # autocast's bf16 copy of the fp32 output layer
            other = 2 * max(a * b for a, b in dims.linear_shapes().values())  # one dequantised weight at a time
        else:
            params = 4 * (total + trainable) + cast + (2 * trainable if setup.mixed else 0)  # adapters cast too
        grads, optimizer = 4.0 * trainable, 8.0 * trainable
        head_grads = 0.0
        if n > 1:  # DDP keeps a second copy of the gradients in its all-reduce buckets
            other += grads
    else:
        trainable = total
        divide = {"ddp": (1, 1), "zero2": (1, n), "fsdp": (n, n), "zero3": (n, n)}[setup.strategy]
        deepspeed_bf16 = setup.mixed and setup.strategy in ("zero2", "zero3")
        # DeepSpeed bf16: a bf16 module (no autocast copies), bf16 grads, fp32 master + AdamW in its partitions.
        # Otherwise our loop: fp32 weights, grads and AdamW, and autocast's bf16 copy of every projection, kept
        # for backward. FSDP2 without a MixedPrecisionPolicy (as sharding.py wraps it) keeps those copies too,
        # for every gathered layer, so they stay whole on each device.
        weight_bytes, grad_bytes, optim_bytes = (2.0, 2.0, 12.0) if deepspeed_bf16 else (4.0, 4.0, 8.0)
        params = weight_bytes * total / divide[0] + (0.0 if deepspeed_bf16 else cast)
        grads = grad_bytes * total / divide[1]
        optimizer = optim_bytes * total / divide[1]
        head_grads = grad_bytes * dims.vocab * dims.hidden / divide[1]
        layer = dims.layer_linear_params
        if divide[0] > 1:  # full weights of ~2 layers gathered at once (prefetch), plus one layer's grads
            other = layer * (2 * weight_bytes + grad_bytes)
        elif setup.strategy == "ddp" and n > 1:  # the all-reduce buckets: a second copy of the gradients
            other = grad_bytes * total
        elif setup.strategy == "zero2" and n > 1:
            other = grad_bytes * min(total, ZERO2_BUCKET)
    kept, transient = activation_bytes(dims, setup, mb)
    # Backward frees each layer's activations as it makes that layer's gradients, so the high-water mark is at
    # its start (all activations, the head's gradient, the logits' gradients) or at its end (all gradients).
    peak = params + optimizer + other + max(kept + head_grads + transient, grads)
    return Estimate(setup.strategy, params, grads, optimizer, kept, other, peak, trainable)


def max_micro_batch(dims: ModelDims, setup: Setup, device_bytes: float, limit: int = 1 << 16) -> int:
    """The largest micro-batch whose peak fits under the headroom; 0 if not even one sequence does."""
    fits = lambda b: estimate(dims, setup, b).fits(device_bytes, setup.headroom)  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # peak grows linearly in the batch: bisect between the last fit and the first miss
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def min_gpus_zero3(dims: ModelDims, setup: Setup, device_bytes: float, limit: int = 4096) -> int | None:
    """The fewest devices on which ZeRO-3 fits one micro-batch of this setup (None: not even `limit`)."""
    z3 = dataclasses.replace(setup, strategy="zero3")
    n = 1
    while n <= limit:
        if estimate(dims, dataclasses.replace(z3, gpus=n), 1).fits(device_bytes, setup.headroom):
            return n
        n *= 2
    return None


def suggestion(dims: ModelDims, setup: Setup, device_bytes: float) -> str:
    """One line: the largest micro-batch, or what would make it fit."""
    best = max_micro_batch(dims, setup, device_bytes)
    if best:
        pow2 = 1 << int(math.log2(best))
        left = "fits" if best >= setup.micro_batch else f"micro-batch {setup.micro_batch} does not fit"
        return (f"{setup.strategy}: {left}; largest micro-batch {best} (power of two: {pow2}) at seq_len "
                f"{setup.seq_len} with {setup.headroom:.0%} headroom")
    ideas = []
    if setup.strategy in ("ddp", "zero2"):
        n = min_gpus_zero3(dims, setup, device_bytes)
        if n is not None:
            ideas.append(f"zero3 on {n}+ devices")
        elif not setup.uses_checkpointing:
            n = min_gpus_zero3(dims, dataclasses.replace(setup, checkpointing=True), device_bytes)
            if n is not None:
                ideas.append(f"zero3 + activation checkpointing on {n}+ devices")
    for alt in ("lora", "qlora") if setup.device == "cuda" else ("lora",):
        if alt != setup.strategy and max_micro_batch(dims, dataclasses.replace(setup, strategy=alt), device_bytes):
            ideas.append(alt)
    if not setup.uses_checkpointing and max_micro_batch(dims, dataclasses.replace(setup, checkpointing=True),
                                                        device_bytes):
        ideas.append(f"{setup.strategy} + activation checkpointing")
    if setup.seq_len > 256 and max_micro_batch(dims, dataclasses.replace(setup, seq_len=setup.seq_len // 4),
                                               device_bytes):
        ideas.append(f"{setup.strategy} at seq_len {setup.seq_len // 4}")
    return (f"{setup.strategy}: does not fit even micro-batch 1 on {setup.gpus} x {device_bytes / GiB:.0f} GiB; "
            f"would fit: {', '.join(ideas) or 'more or larger devices'}")
