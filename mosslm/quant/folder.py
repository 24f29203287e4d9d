"""`moss quantize`: a checkpoint folder whose linear weights are int8 or int4, and its loader.

The folder is our checkpoint folder with one change: the weights are in `quantized.safetensors`
(QuantLinear buffers for every quantized linear, the rest as they were), and `mosslm.json` says
`"quantization": {"bits", "group_size", "modules"}`. Plain transformers finds no `model.safetensors`
there and says so, rather than loading random weights. A tied output head gets its own quantized copy
(decode reads the head every token; the embedding lookup reads one row) and the config is untied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..paths import atomic_dir
from .linear import QuantError, QuantLinear, default_group_size, default_int8_group

WEIGHTS = "quantized.safetensors"
_SKIP = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
         "manifest.json", "config.json", "mosslm.json", WEIGHTS}


def quantization_spec(path: Path) -> dict[str, Any] | None:
    """The folder's quantization entry in mosslm.json, or None for an ordinary folder."""
    meta = path / "mosslm.json"
    if not path.is_dir() or not meta.exists():
        return None
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("quantization")
    except (OSError, ValueError):
        return None


def _linears(model) -> list[tuple[str, torch.nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _set_module(model, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _untie_head(model) -> None:
    """Give the output head its own weight so it can be quantized while the embedding stays as it is."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def quantize_model(model, bits: int, group_size: int | None = None) -> dict[str, Any]:
    """Replace every nn.Linear of the model by a QuantLinear in place; returns the spec for mosslm.json."""
    if bits not in (4, 8):
        raise QuantError(f"--bits must be 8 or 4 (got {bits})")
    _untie_head(model)
    linears = _linears(model)
    if not linears:
        raise QuantError("the model has no linear layers to quantize")
    sizes = [m.in_features for _, m in linears]
    group = default_group_size(sizes, group_size) if bits == 4 else default_int8_group(sizes, group_size)
    for name, linear in linears:
        _set_module(model, name, QuantLinear.from_linear(linear, bits, group))
    return {"bits": bits, "group_size": group, "modules": [name for name, _ in linears]}


def prepare(model) -> dict[str, int]:
    """Pick each QuantLinear's kernel for where it now lives; returns {kernel: layers}."""
    kernels: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            kernel = m.prepare()
            kernels[kernel] = kernels.get(kernel, 0) + 1
    return kernels


def weight_bytes(model) -> int:
    """Bytes of every weight the model holds for inference (quantized values, scales, embeddings, norms)."""
    total, seen = 0, set()
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.weight_bytes() + (0 if m.bias is None else m.bias.numel() * m.bias.element_size())
            continue
        for p in m.parameters(recurse=False):
            if id(p) not in seen:  # a tied head is the embedding's own tensor
                seen.add(id(p))
                total += p.numel() * p.element_size()
    return total


def save_quantized(model, tokenizer, source: Path | None, out: Path, spec: dict[str, Any],
                   metadata: dict[str, Any] | None = None) -> Path:
    """Write the quantized folder atomically. Files of a source folder (tokenizer, chat template,
    generation config) are copied; a GGUF source gets them from its loaded tokenizer and config."""
    from safetensors.torch import save_file

    from ..model import METADATA_FILE, write_manifest

    with atomic_dir(out) as tmp:
        if source is not None and source.is_dir():
            for f in source.iterdir():
                if f.is_file() and f.name not in _SKIP:
                    shutil.copy2(f, tmp / f.name)
        else:
            tokenizer.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "mosslm_quantization": json.dumps(spec)})
        meta: dict[str, Any] = {}
        if source is not None and (source / METADATA_FILE).exists():
            meta = json.loads((source / METADATA_FILE).read_text(encoding="utf-8"))
        meta.update(metadata or {})
        meta["quantization"] = spec
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_manifest(tmp)
    return out


def load_quantized(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a `moss quantize` folder, its linears on the CPU's int8/int4 kernels."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = quantization_spec(path)
    if not spec or not (path / WEIGHTS).exists():
        raise QuantError(f"{path} is not a quantized folder (no {WEIGHTS} and quantization entry in mosslm.json)")
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):  # no fp copy of the weights is ever made
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name in spec["modules"]:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise QuantError(f"{path}: quantized module {name!r} is not in the model its config describes") from None
        _set_module(model, name, QuantLinear(linear.in_features, linear.out_features, spec["bits"],
                                             spec.get("group_size"), linear.bias is not None, dtype))
    state = load_file(str(path / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left or unexpected:
        raise QuantError(f"{path}/{WEIGHTS} does not match its config: "
                         f"{len(left)} tensors missing ({', '.join(left[:3])}), {len(unexpected)} unexpected")
    model = model.to(dtype)
    prepare(model)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model, tokenizer


_GGUF_BITS = {"Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "Q5_0": 8, "Q5_1": 8, "Q5_K": 8, "Q6_K": 8, "Q8_0": 8}


def gguf_weight_bits(path: Path) -> int | None:
    """8 or 4 for a GGUF file whose layer matrices are mostly 8-bit-class or 4-bit types, None for f16/f32."""
    import gguf

    counts: dict[int | None, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            bits = _GGUF_BITS.get(t.tensor_type.name)
            counts[bits] = counts.get(bits, 0) + int(t.n_elements)
    return max(counts, key=counts.get) if counts else None


def quantize_like_gguf(model, path: Path) -> dict[str, Any] | None:
    """Keep a quantized GGUF quantized in memory: its dequantized linears as int8 (8-bit types) or int4 in
    groups of 32 (4-bit types, the GGUF block size), on the CPU kernels; None for an f16/f32 file."""
    bits = gguf_weight_bits(path)
    if bits is None:
        return None
    group = None
    if bits == 4:
        try:
            group = default_group_size([m.in_features for _, m in _linears(model)], 32)
        except QuantError:
            bits = 8  # a layer whose inputs are not a multiple of 32: 8 bits still halve the bytes
    spec = quantize_model(model, bits, group)
    if bits == 4 and group == 32:
        spec["exact_from_gguf"] = _copy_gguf_int4_blocks(model, path)
    prepare(model)
    return spec


def _unpermute_rotary(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved q/k rows back to transformers' rotate-half order (what its loader does)."""
    n = rows.shape[0]
    return rows.reshape(heads, n // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _copy_gguf_int4_blocks(model, path: Path) -> int:
    """Q4_0 and Q4_1 blocks are groups of 32 on an affine 16-level grid, exactly our int4 format:
    Q4_0 w = d (q - 8) is scale d, zero 0; Q4_1 w = d q + m is scale d, zero m + 8 d. Copy them bit for bit
    rather than requantizing their dequantized values; returns how many linears were copied."""
    import gguf

    from .gguf_export import _tensor_names
    from .linear import pack_nibbles

    by_gguf = {v: k[: -len(".weight")] for k, v in _tensor_names(model.config).items()}
    tensors = gguf.GGUFReader(str(path)).tensors
    if "output.weight" not in {t.name for t in tensors}:
        by_gguf["token_embd.weight"] = "lm_head"  # the untied head: the embedding's own blocks
    modules = dict(model.named_modules())
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    copied = 0
    for t in tensors:
        kind = t.tensor_type.name
        target = by_gguf.get(t.name)
        layer = modules.get(target) if target else None
        if not isinstance(layer, QuantLinear) or kind not in ("Q4_0", "Q4_1"):
            continue
        size = 18 if kind == "Q4_0" else 20
        raw = np.asarray(t.data, dtype=np.uint8).reshape(layer.out_features, -1, size)
        d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        if kind == "Q4_0":
            zero, qs = np.zeros_like(d), raw[..., 2:]
        else:
            zero, qs = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) + 8 * d, raw[..., 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(layer.out_features, layer.in_features)
        if target.endswith("q_proj") or target.endswith("k_proj"):
            h = heads if target.endswith("q_proj") else kv_heads
            q, d, zero = (_unpermute_rotary(a, h) for a in (q, d, zero))
        layer.qweight.copy_(pack_nibbles(torch.from_numpy(np.ascontiguousarray(q))))
        layer.scales.copy_(torch.from_numpy(np.ascontiguousarray(d)))
        layer.zeros.copy_(torch.from_numpy(np.ascontiguousarray(zero)))
        copied += 1
    return copied
