"""LoRA and QLoRA adapters (PEFT) on a frozen base, and what a foreign base needs to learn the MOSS protocol.

A fine-tune's output folder is an adapter, not a model: PEFT's adapter files, the tokenizer (with the MOSS
tokens when `--protocol moss` added them), the chat template and `mosslm.json`, which names the base. `load`
puts the adapter back on its base (merged in memory, so the engine sees a plain model); `merge` writes that
merged model as an ordinary checkpoint folder that plain transformers loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from .. import model as modellib
from .. import protocol
from ..paths import atomic_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoraError(ValueError):
    pass


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise LoraError("LoRA needs peft: pip install 'mosslm[finetune]'")


def is_adapter(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).exists()


# ---------------------------------------------------------------- building

def load_base(init: str, qlora: bool = False, dtype: torch.dtype = torch.float32):
    """The base model and tokenizer: any folder or GGUF file that `moss chat` loads (GGUF is dequantised).
    QLoRA loads an HF folder's weights in 4 bits with bitsandbytes, which needs a CUDA GPU."""
    if not qlora:
        loaded = modellib.load(init, dtype=dtype)
        return loaded.model, loaded.tokenizer
    if not torch.cuda.is_available():
        raise LoraError("qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); on this machine use LoRA "
                        "(lora_r > 0, qlora false): the base stays frozen, in fp32 or bf16")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LoraError("qlora needs bitsandbytes: pip install 'mosslm[qlora]'")
    if not Path(init).is_dir():
        raise LoraError(f"qlora loads an HF checkpoint folder, not {init!r} (a GGUF file is already quantised: "
                        "use LoRA on it, or convert it to a folder first)")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(init, quantization_config=quant, device_map={"": 0})
    from peft import prepare_model_for_kbit_training
    return prepare_model_for_kbit_training(model), AutoTokenizer.from_pretrained(init)


def protocol_tokens_missing(tokenizer) -> list[str]:
    """The MOSS terminators, role tags and our end-of-text/pad that this tokenizer does not know as tokens."""
    vocab = tokenizer.get_vocab()
    return [t for t in protocol.PROTECTED if t not in vocab]


def add_protocol_tokens(model, tokenizer) -> list[int]:
    """Teach a foreign base the MOSS tokens: each becomes one special token, with a new embedding row (the mean
    of the others, transformers' default) that the fine-tune trains. Returns the ids of every protocol token, so
    their rows are trained even where the base already had the token."""
    missing = protocol_tokens_missing(tokenizer)
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = protocol.PAD
    return [tokenizer.convert_tokens_to_ids(t) for t in protocol.PROTECTED]


def wrap(model, r: int, alpha: int, dropout: float, targets: list[str], token_ids: list[int] | None = None):
    """The base frozen, LoRA adapters on `targets`, and (with the protocol tokens) only those embedding rows
    trainable. Tied input/output embeddings stay tied: PEFT trains the rows once for both."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = [t for t in targets if t not in present]
    if unknown:
        raise LoraError(f"lora_targets {unknown} are not modules of this model; it has e.g. "
                        f"{sorted(n for n in present if n.endswith('proj'))[:8]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        task_type="CAUSAL_LM",
                        trainable_token_indices={"embed_tokens": sorted(set(token_ids))} if token_ids else None)
    return get_peft_model(model, config)


def skip_input_casts(model) -> None:
    """Under bf16 autocast, PEFT's cast of each adapter's input to the adapters' fp32 and autocast's cast back
    to bf16 for the matmul are lossless but copy every activation twice; training skips them (bit-identical)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


def build(cfg) -> tuple[Any, Any]:
    """(model, tokenizer) of a LoRA run from a TrainConfig: base from `init`, protocol tokens, adapters."""
    if not cfg.init:
        raise LoraError("LoRA fine-tunes a base model: set init= (a checkpoint folder, HF folder or .gguf file)")
    model, tokenizer = load_base(cfg.init, cfg.qlora)
    token_ids = add_protocol_tokens(model, tokenizer) if cfg.add_protocol_tokens else None
    if not cfg.add_protocol_tokens and protocol_tokens_missing(tokenizer):
        raise LoraError(f"{cfg.init} does not know the MOSS tokens ({', '.join(protocol_tokens_missing(tokenizer)[:3])}"
                        ", ...): fine-tune it with --protocol moss (add_protocol_tokens=true)")
    model = wrap(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, token_ids)
    model.train()
    return model, tokenizer


def trainable_counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- saving and loading

def load_adapter_weights(model, folder: Path) -> None:
    """Resume: the adapter weights of a training checkpoint back into the wrapped model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(Path(folder) / ADAPTER_WEIGHTS))
    # A tied output layer shares the input rows' token adapter: its saved copy has no module of its own.
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if not k.endswith("lm_head.token_adapter."
                                                                                       "trainable_tokens_delta")]
    if unexpected:
        raise modellib.CheckpointError(f"{folder}: adapter weights do not match ({unexpected[:3]})")


def save_adapter_weights(model, folder: Path) -> None:
    """Only the adapters and the protocol tokens' rows: a resized embedding is not saved whole."""
    model.save_pretrained(folder, save_embedding_layers=False)


def save_adapter(model, tokenizer, out: str | os.PathLike, base: str, preset: str = "mosslm",
                 metadata: dict[str, Any] | None = None) -> Path:
    """The fine-tune's result, atomically: adapter files, tokenizer and chat template, mosslm.json naming the base."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_adapter_weights(model, tmp)
        tokenizer.chat_template = protocol.chat_template(preset)
        tokenizer.save_pretrained(tmp)
        meta = {"protocol": preset, "mosslm_version": modellib._version(), "adapter": True,
                "base": str(Path(base).expanduser().resolve()) if Path(base).expanduser().exists() else base,
                **(metadata or {})}
        (tmp / modellib.METADATA_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        modellib.write_manifest(tmp)
    return out


def adapter_metadata(adapter: str | os.PathLike) -> dict[str, Any]:
    folder = Path(adapter)
    if not is_adapter(folder):
        raise LoraError(f"{folder} is not a LoRA adapter folder (no {ADAPTER_CONFIG})")
    meta = folder / modellib.METADATA_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}


def load_merged(adapter: str | os.PathLike, base: str | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, metadata): the base with the adapter merged in, ready for the engine."""
    require_peft()
    from peft import PeftModel
    from transformers import AutoTokenizer

    folder = Path(adapter)
    meta = adapter_metadata(folder)
    if (folder / modellib.MANIFEST).exists():
        modellib.verify_checkpoint(folder)
    base = base or meta.get("base") or json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise LoraError(f"{folder} does not name its base model: pass --model BASE")
    loaded = modellib.load(base, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = loaded.model
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    try:
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise LoraError(f"adapter {folder} does not fit base {base}: {e}") from None
    model.eval()
    return model.to(dtype), tokenizer, {**meta, "base": str(base)}


def merge(adapter: str | os.PathLike, out: str | os.PathLike, base: str | None = None) -> Path:
    """`moss export --merge-lora`: one plain HF folder (our checkpoint layout) with the adapter merged in."""
    model, tokenizer, meta = load_merged(adapter, base)
    keep = {k: v for k, v in meta.items() if k not in ("adapter", "protocol", "mosslm_version")}
    return modellib.save_checkpoint(model, tokenizer, out, preset=meta.get("protocol") or "mosslm",
                                    metadata={**keep, "merged_from": str(Path(adapter).resolve())})
