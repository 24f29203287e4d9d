"""Model presets, building, saving and loading checkpoints.

A checkpoint is a plain Hugging Face folder (config.json, model.safetensors,
generation_config.json, tokenizer files with a chat template) plus our small
`mosslm.json`, so any transformers user can load it with the Auto classes.
We also load any local Llama/Qwen2/Mistral-family folder, GGUF files, and the
released MOSS-moon-003 folders (mapped onto CodeGen, moss_checkpoint.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import moss_checkpoint, protocol, quant
from .paths import atomic_dir

METADATA_FILE = "mosslm.json"
MANIFEST = "manifest.json"  # sizes and sha256 of every file: truncation and corruption are caught on load

# Named sizes. All are standard Llama configs; "moss-16b" matches MOSS's scale
# (34 layers, hidden 6144, 2048 context) for multi-GPU runs.
PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "mini": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,  # ~4M with a 4k vocab
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10,  # ~34M with an 8k vocab
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048),
    "base": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048),
    "moss-16b": dict(hidden_size=6144, intermediate_size=18432, num_hidden_layers=34,
                     num_attention_heads=48, num_key_value_heads=8, max_position_embeddings=2048,
                     tie_word_embeddings=False),
}


class ModelLoadError(RuntimeError):
    pass


class CheckpointError(ModelLoadError):
    """A checkpoint folder that is incomplete, truncated or corrupt."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify_checkpoint(folder: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present and intact."""
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise CheckpointError(f"{folder} has no {MANIFEST}: an incomplete checkpoint")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{manifest} is corrupt: {e}") from None
    for name, info in files.items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {folder} is missing {name}")
        if path.stat().st_size != info["bytes"]:
            raise CheckpointError(f"checkpoint {folder}: {name} is truncated "
                                  f"({path.stat().st_size} of {info['bytes']} bytes)")
        if _sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: {name} is corrupt (checksum mismatch)")


def model_config(preset: str, vocab_size: int, **overrides: Any):
    """A transformers LlamaConfig for a named preset."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {', '.join(PRESETS)}")
    kwargs = dict(vocab_size=vocab_size, rope_theta=10000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
    kwargs.update(PRESETS[preset])
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def count_parameters(config) -> int:
    """Parameters of a preset without allocating it (meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_model(preset: str, tokenizer, seed: int = 0, **overrides: Any):
    """A randomly initialised model whose vocabulary and special ids match the tokenizer."""
    from transformers import AutoModelForCausalLM

    config = model_config(preset, vocab_size=len(tokenizer), **overrides)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    protocol: str | None  # "moss"/"mosslm" when the model speaks the MOSS protocol, else None
    context_length: int
    dtype_choice: Any = None  # hardware.DtypeChoice when the dtype was given by name (auto/fp32/bf16)
    generation_config: Any = None  # set when model is None (another runtime holds the weights)

    @property
    def speaks_moss(self) -> bool:
        return self.protocol is not None


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, preset: str = "mosslm",
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write a complete HF folder atomically: a temp folder, then one rename."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        tokenizer.chat_template = protocol.chat_template(preset)
        eom = tokenizer.convert_tokens_to_ids(protocol.EOM)
        gen = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=[i for i in (eom, tokenizer.eos_token_id) if i is not None and i != tokenizer.unk_token_id],
            **protocol.MOSS_GENERATION_DEFAULTS, do_sample=True)
        model.generation_config = gen
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {"protocol": preset, "mosslm_version": _version(), **(metadata or {})}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        write_manifest(tmp)
    return out


def _version() -> str:
    from . import __version__
    return __version__


def load(path: str | os.PathLike, dtype: torch.dtype | str = torch.float32,
         adapter: str | os.PathLike | None = None, gguf_quantized: bool = False) -> LoadedModel:
    """Load a checkpoint folder (ours or any local HF causal LM), a .gguf file, or a LoRA adapter folder
    (`moss finetune`'s output: put on the base its mosslm.json names, or on `path` when `adapter` is given).
    `gguf_quantized`: a Q8_0/Q4_x GGUF keeps int8/int4 linears on the CPU kernels (`moss chat`, `moss serve`)
    instead of fp weights (what training and export need).

    `dtype` by name ("auto", "fp32", "bf16") is resolved for inference on this machine
    (mosslm/hardware.py), announced once, and kept as `.dtype_choice`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}")
    if adapter is not None or (p / "adapter_config.json").exists():
        return _load_adapter(Path(adapter).expanduser() if adapter else p, str(p) if adapter else None, dtype)
    choice, requested = None, None
    if isinstance(dtype, str):  # by name: resolved at the shapes of this model
        requested = dtype
        dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        config = _folder_config(p)
        if config is not None:  # decided before the weights load: a 16B model must not pass through fp32
            choice = _choose_inference_dtype(requested, config)
            dtype = choice.torch_dtype
    try:
        if p.is_file():
            if p.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{p} is a file but not a .gguf; pass a checkpoint folder or a GGUF file")
            _require("gguf", "GGUF files", "gguf")
            _require("accelerate", "GGUF files", "gguf")
            tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
            model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype)
            _forget_gguf_quantizer(model)
            if gguf_quantized:
                quant.quantize_like_gguf(model, p)
        else:
            if not (p / "config.json").exists():
                raise ModelLoadError(f"{p} has no config.json: not a Hugging Face checkpoint folder")
            if (p / MANIFEST).exists():
                verify_checkpoint(p)
            if quant.quantization_spec(p):
                model, tokenizer = quant.load_quantized(p, dtype)
            elif moss_checkpoint.is_moss_folder(p):
                model, tokenizer = moss_checkpoint.load(p, dtype)
            else:
                _refuse_remote_code(p)
                # Never run a checkpoint's code, and never stop to ask about it on stdin.
                tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=False)
                model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, trust_remote_code=False)
    except ModelLoadError:
        raise
    except (moss_checkpoint.MossCheckpointError, quant.QuantError) as e:
        raise ModelLoadError(f"could not load {p}: {e}") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load {p}: {e}") from e
    model.eval()
    if requested is not None:
        choice = choice or _choose_inference_dtype(requested, model.config)
        if model.dtype != choice.torch_dtype:
            model = model.to(choice.torch_dtype)
    return LoadedModel(model, tokenizer, str(p), detect_protocol(p, tokenizer), context_length(model), choice)


def load_without_weights(path: str | os.PathLike) -> LoadedModel:
    """A folder's tokenizer, protocol, context and generation config, for a runtime that loads the weights
    itself (the vLLM backend): `.model` is None."""
    from transformers import AutoTokenizer, GenerationConfig

    p = Path(path).expanduser()
    config = _folder_config(p)
    if config is None:
        raise ModelLoadError(f"{p} is not a Hugging Face checkpoint folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer of {p}: {e}") from None
    try:
        gen = GenerationConfig.from_pretrained(p)
    except OSError:
        gen = GenerationConfig.from_model_config(config)
    context = next((v for k in ("max_position_embeddings", "n_positions") if isinstance(v := getattr(config, k, None), int)),
                   protocol.MOSS_CONTEXT_LENGTH)
    return LoadedModel(None, tokenizer, str(p), detect_protocol(p, tokenizer), context, generation_config=gen)


def _load_adapter(folder: Path, base: str | None, dtype) -> LoadedModel:
    """A LoRA adapter merged into its base in memory: the engine sees one plain model."""
    from .train import lora  # the adapter format lives with the fine-tune that writes it

    try:
        model, tokenizer, meta = lora.load_merged(folder, base)
    except lora.LoraError as e:
        raise ModelLoadError(str(e)) from None
    choice = None
    if isinstance(dtype, str):
        choice = _choose_inference_dtype(dtype, model.config)
        dtype = choice.torch_dtype
    model = model.to(dtype)
    return LoadedModel(model, tokenizer, str(folder), meta.get("protocol") or detect_protocol(folder, tokenizer),
                       context_length(model), choice)


def _forget_gguf_quantizer(model) -> None:
    """GGUF weights arrive dequantised, as plain tensors, but transformers still marks the model quantized and
    refuses to save it; a fine-tune or a merge of a GGUF base must save as an ordinary folder."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _choose_inference_dtype(requested: str, config):
    from .hardware import Workload, choose_dtype

    return choose_dtype(requested, "cpu", Workload.decoding(config))


def _folder_config(path: Path):
    """A folder's model config without its weights, or None (a GGUF file, or one the loader will reject)."""
    if not path.is_dir():
        return None
    try:
        if moss_checkpoint.is_moss_folder(path):
            return moss_checkpoint.codegen_config(moss_checkpoint.read_config(path) or {})
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return None


def _refuse_remote_code(path: Path) -> None:
    """A folder whose config names custom code: say so instead of asking `[y/N]` on stdin and failing."""
    config = moss_checkpoint.read_config(path) or {}
    if config.get("auto_map"):
        from transformers import CONFIG_MAPPING

        kind = config.get("model_type")
        if kind not in CONFIG_MAPPING:
            raise ModelLoadError(f"{path} needs its own Python code (model_type {kind!r}, auto_map "
                                 f"{sorted(config['auto_map'])}); mosslm never runs a checkpoint's code. "
                                 "Supported: transformers' own architectures, our checkpoints, GGUF files and "
                                 "MOSS-moon-003 folders")


def _require(module: str, what: str, extra: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(f"loading {what} needs the '{module}' package: pip install 'mosslm[{extra}]'")


def detect_protocol(path: Path, tokenizer) -> str | None:
    """Which MOSS preset a checkpoint speaks, or None for a foreign chat template."""
    meta_file = path / METADATA_FILE if path.is_dir() else None
    if meta_file and meta_file.exists():
        return json.loads(meta_file.read_text()).get("protocol")
    vocab = tokenizer.get_vocab()
    if protocol.EOM in vocab and protocol.EOH in vocab:
        return "moss"  # a real MOSS checkpoint: terminators are special tokens
    return None


def context_length(model) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return protocol.MOSS_CONTEXT_LENGTH
