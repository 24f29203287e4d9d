"""The engine's own decoder forward for Llama-family models: the same layers, without the per-call plumbing.

A decode step of a small model is a few hundred tiny operations, and at batch 1 the time between them
counts as much as the operations: transformers' decoder spends it on keyword routing, mask and cache
dispatch, the attention-interface lookup and module hooks in every layer (SmolLM2-135M int4 on 2 cores:
the linears take about 7 ms of a 17 ms step). This runner reads the very modules transformers built
(embedding, rotary embedding, norms, projections, whatever kind of linear they are: nn.Linear, a packed
one, a QuantLinear) and calls them in the order transformers does, with its arithmetic (RMSNorm in fp32,
rotate-half RoPE, SDPA with the single-query GQA packing), so its logits match the stock forward's to
rounding (tests/test_runner.py). Two changes that only fewer calls make:
- q/k/v and gate/up run as one linear each where they are quantized alike (`join_linears`): 4 kernel
  calls a layer instead of 7, and the parts then read their rows of the joined weights, so memory does
  not grow and transformers' own forward (eval, training) still sees its layers;
- the rotary cos/sin are computed once per step for all layers, as transformers does too.
Architectures: llama, mistral (without a sliding window shorter than the context) and qwen2 (q/k/v
biases), the shapes whose layers are exactly these; anything else runs transformers' forward.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .kv_cache import SlotKV

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "mistral", "qwen2")
INT4_PACK_ROWS = 64  # the CPU int4 kernel packs rows in blocks of 64: parts are joined on those boundaries


def unsupported_reason(model, max_seq_len: int) -> str | None:
    """Why the runner cannot run this model (None: it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in ARCHITECTURES:
        return f"architecture {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(ARCHITECTURES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (the runner's MLP is SwiGLU)"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < max_seq_len:
        return f"a sliding window of {window} tokens"
    decoder = model.get_decoder()
    for name in ("embed_tokens", "rotary_emb", "norm", "layers"):
        if not hasattr(decoder, name):
            return f"the decoder has no {name}"
    for layer in decoder.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or any(not hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
                or any(not hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj")) \
                or hasattr(attn, "q_norm") or not hasattr(layer, "post_attention_layernorm"):
            return "a decoder layer that is not q/k/v/o attention with a SwiGLU MLP"
    return None


def _rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # transformers' LlamaRMSNorm: the statistics in fp32, the weight applied in the input dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _joinable(layers: list[torch.nn.Module]) -> bool:
    """Quantized layers on the same input with the same kernel and format can run as one."""
    from mosslm.quant.linear import QuantLinear

    if not all(isinstance(m, QuantLinear) for m in layers):
        return False
    keys = {(m.in_features, m.bits, m.group_size, m._kernel, m.bias is None, m.scales.dtype) for m in layers}
    return len(keys) == 1 and layers[0]._kernel in ("int8pack", "int4pack", "q4own", "q8own")


@torch.no_grad()
def join_linears(layers: list[torch.nn.Module]) -> torch.nn.Module | None:
    """One quantized linear whose output is the given layers' outputs side by side, or None where they
    cannot be joined (other kinds of layer, different formats, or a joined kernel that disagrees with them).

    The kernels' weight layouts are per output row (int4's packing too, checked here on a probe input), so
    the joined layer is the rows stacked, and the parts then read their rows of it: no second copy."""
    from mosslm.quant.linear import QuantLinear

    if not _joinable(layers):
        return None
    first, sizes = layers[0], [m.out_features for m in layers]
    if first._kernel == "int4pack" and any(size % INT4_PACK_ROWS for size in sizes):
        return None
    joined = QuantLinear(first.in_features, sum(sizes), first.bits, first.group_size, first.bias is not None,
                         first.scales.dtype)
    joined.scales = torch.cat([m.scales for m in layers])
    if first.bias is not None:
        joined.bias = torch.cat([m.bias for m in layers])
    joined._kernel, joined._kernel_rows = first._kernel, first._kernel_rows
    if first._kernel == "q8own":
        joined.qweight = torch.empty(0, dtype=torch.int8)
        joined._q8u = torch.cat([m._q8u for m in layers])
        joined._q8_scale = torch.cat([m._q8_scale for m in layers])
    elif first.bits == 8:
        joined.qweight = torch.cat([m.qweight for m in layers])
    elif first._kernel == "q4own":
        joined.zeros = torch.empty(0, dtype=first.zeros.dtype)
        joined.qweight = torch.cat([m.qweight for m in layers])
        joined._q4_sb = torch.cat([m._q4_sb for m in layers])
    else:
        joined.zeros = torch.cat([m.zeros for m in layers])
        joined.qweight = torch.empty(0, dtype=torch.uint8)
        joined._packed = torch.cat([m._packed for m in layers])
        joined._scale_zero = torch.cat([m._scale_zero for m in layers], dim=1)
    probe = torch.linspace(-1, 1, 2 * first.in_features).view(2, -1).to(first.scales.dtype)
    if not torch.equal(joined(probe), torch.cat([m(probe) for m in layers], dim=-1)):
        log.warning("mosslm runner: a joined %s layer disagrees with its parts; running them apart", first._kernel)
        return None
    rows = 0
    for m, size in zip(layers, sizes):  # the parts read their rows of the joined weights where aligned
        if first._kernel == "q8own":
            m._q8u, m._q8_scale = joined._q8u[rows: rows + size], joined._q8_scale[rows: rows + size]
        elif first.bits == 8:
            view = joined.qweight[rows: rows + size]
            if view.data_ptr() % 64 == 0:  # the int8 kernel's vector loads need aligned rows (linear.py)
                m.qweight, m.scales, m._cast_scales = view, joined.scales[rows: rows + size], None
        elif first._kernel == "q4own":
            part = slice(rows, rows + size)
            m.qweight, m._q4_sb = joined.qweight[part], joined._q4_sb[part]
        else:
            m._packed = joined._packed[rows: rows + size]
        rows += size
    return joined


class _Layer:
    def __init__(self, layer, cfg, fuse: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.in_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scaling = getattr(attn, "scaling", self.head_dim ** -0.5)
        self.q, self.k, self.v, self.o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.gate, self.up, self.down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.qkv = join_linears([self.q, self.k, self.v]) if fuse else None
        self.gate_up = join_linears([self.gate, self.up]) if fuse else None
        self.split_qkv = [self.q.out_features, self.k.out_features, self.v.out_features]

    def __call__(self, x: torch.Tensor, cos, sin, mask, kv, index: int) -> torch.Tensor:
        b, n, _ = x.shape
        h = _rms_norm(self.in_norm, x)
        if self.qkv is not None:
            q, k, v = self.qkv(h).split(self.split_qkv, dim=-1)
        else:
            q, k, v = self.q(h), self.k(h), self.v(h)
        q = _rotate(q.view(b, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        k, v = kv.update(k, v, index)
        if k.dtype != q.dtype:  # a narrower cache (engine.kv_cache_dtype): attention in the activations' dtype
            k, v = k.to(q.dtype), v.to(q.dtype)
        groups = self.heads // self.kv_heads
        if groups > 1 and n == 1:  # one query: its heads become rows of their key/value head (no repeat)
            q = q.reshape(b, self.kv_heads, groups, self.head_dim)
        elif groups > 1:
            k = k[:, :, None].expand(b, self.kv_heads, groups, *k.shape[2:]).reshape(b, self.heads, *k.shape[2:])
            v = v[:, :, None].expand(b, self.kv_heads, groups, *v.shape[2:]).reshape(b, self.heads, *v.shape[2:])
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        a = a.reshape(b, -1, n, self.head_dim).transpose(1, 2).reshape(b, n, -1)
        x = x + self.o(a)
        h = _rms_norm(self.post_norm, x)
        if self.gate_up is not None:
            g, u = self.gate_up(h).chunk(2, dim=-1)
        else:
            g, u = self.gate(h), self.up(h)
        return x + self.down(F.silu(g) * u)


def _q4_step_tensors(layers: list[_Layer]) -> list[torch.Tensor] | None:
    """The 10 tensors a layer that csrc/q4_cpu.cpp's decode step reads, or None where a layer is not int4 or
    int8 on mosslm's kernels with joined q/k/v and gate/up (then every step runs the layers above)."""
    out, groups = [], set()
    for layer in layers:
        linears = [layer.qkv, layer.o, layer.gate_up, layer.down]
        if any(getattr(m, "_kernel", None) not in ("q4own", "q8own") or m.bias is not None for m in linears):
            return None
        if layer.head_dim % 16 or any(n.weight is None for n in (layer.in_norm, layer.post_norm)):
            return None
        groups |= {m.group_size for m in linears if m._kernel == "q4own"}
        qkv, o, gate_up, down = ((m.qweight, m._q4_sb) if m._kernel == "q4own" else (m._q8u, m._q8_scale)
                                 for m in linears)
        out += [layer.in_norm.weight.detach().float().contiguous(), *qkv, *o,
                layer.post_norm.weight.detach().float().contiguous(), *gate_up, *down]
    return out if len(groups) <= 1 else None


class DecoderRunner:
    """decoder(ids [B, n], mask [B, 1, n, kv], positions [B, n], kv) -> last hidden states [B, n, H].

    Where every layer is int4 or int8 on mosslm's kernels, a decode step (one new token a row, the engine's SlotKV
    cache) is one C++ call over all layers (`q4_decode_step`): fp32 activations, int8 per block into the
    linears, attention over each row's own slot. Prefill and everything else run the layers in Python."""

    def __init__(self, model, fuse: bool = True) -> None:
        decoder = model.get_decoder()
        self.embed, self.rotary, self.norm = decoder.embed_tokens, decoder.rotary_emb, decoder.norm
        self.layers = [_Layer(layer, model.config, fuse) for layer in decoder.layers]
        self.fused = sum(layer.qkv is not None for layer in self.layers) + \
            sum(layer.gate_up is not None for layer in self.layers)
        self.q4_step = _q4_step_tensors(self.layers) if fuse and self.layers else None
        if self.q4_step is not None:
            first = self.layers[0]
            groups = {m.group_size for layer in self.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)
                      if m._kernel == "q4own"}
            self._q4_args = (first.heads, first.kv_heads, first.head_dim, groups.pop() if groups else 0,
                             float(first.in_norm.variance_epsilon), float(first.scaling))

    def _q4_decode(self, ids: torch.Tensor, positions: torch.Tensor, kv) -> torch.Tensor:
        from mosslm.quant import q4_kernel

        x = self.embed(ids)
        cos, sin = self.rotary(x.float(), positions)
        b = ids.shape[0]
        out = q4_kernel.load().q4_decode_step(
            x.float().reshape(b, -1).contiguous(), self.q4_step, cos.reshape(b, -1).float().contiguous(),
            sin.reshape(b, -1).float().contiguous(), list(kv.rows), positions[:, 0].tolist(), kv.k, kv.v,
            *self._q4_args)
        return _rms_norm(self.norm, out.view(b, 1, -1).to(x.dtype))

    def _q4_applies(self, ids: torch.Tensor, kv) -> bool:
        return (self.q4_step is not None and ids.shape[1] == 1 and ids.device.type == "cpu"
                and isinstance(kv, SlotKV) and kv.k[0].dtype in (torch.bfloat16, torch.float16, torch.float32)
                and len(kv.rows) == ids.shape[0])

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, kv) -> torch.Tensor:
        if self._q4_applies(ids, kv):
            return self._q4_decode(ids, positions, kv)
        x = self.embed(ids)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, kv, i)
        return _rms_norm(self.norm, x)
