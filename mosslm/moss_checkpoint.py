"""Released MOSS-moon-003 checkpoints, run on transformers' own CodeGen classes.

The MOSS folders (`fnlp/moss-moon-003-base`, `-sft`, `-sft-plugin`) declare
`model_type: moss` and ship their own modeling code, which transformers only
runs with `trust_remote_code` and which breaks on transformers 5. The
architecture is CodeGen's, weight names included (GPT-J block: one `ln_1`
feeding attention and MLP in parallel; fused `qkv_proj` read as `mp_num = 4`
parts split query, value, key; rotary on the first `rotary_dim` dims of each
head; untied `lm_head` with bias), so we read the config into a
`CodeGenConfig`, the weights into `CodeGenForCausalLM`, and the GPT-2-style
`vocab.json` + `merges.txt` plus MOSS's added tokens into a fast tokenizer.
None of the folder's Python files is ever imported.

GPTQ-quantized MOSS folders (`wbits` 4 or 8) need Triton kernels on a CUDA
GPU; they are refused with a message that says what to use instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import protocol

MP_NUM = 4  # the fused qkv projection is laid out as 4 model-parallel parts

# MOSS config keys CodeGenConfig takes as they are, and the bookkeeping keys the
# released configs carry; any other key is reported, never silently dropped.
_CODEGEN_KEYS = ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "rotary_dim", "n_inner",
                 "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
                 "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id")
_IGNORED_KEYS = {"model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version",
                 "use_cache", "tie_word_embeddings", "_name_or_path", "gradient_checkpointing",
                 "tokenizer_class", "scale_attn_weights", "summary_type", "summary_use_proj",
                 "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "task_specific_params"}


_reported: set[tuple[str, ...]] = set()


class MossCheckpointError(ValueError):
    """A MOSS folder that cannot be run as it is; the message says what is needed."""


def read_config(path: Path) -> dict[str, Any] | None:
    """The folder's config.json, or None when there is none or it is not JSON."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_moss_folder(path: Path) -> bool:
    config = read_config(path) if path.is_dir() else None
    if not isinstance(config, dict):
        return False
    return config.get("model_type") == "moss" or "MossForCausalLM" in (config.get("architectures") or [])


def refuse_quantized(config: dict[str, Any], path: Path) -> None:
    bits = config.get("wbits")
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if bits in (4, 8) or method == "gptq":
        bits = bits or quant.get("bits")
        group = config.get("groupsize", quant.get("group_size") if isinstance(quant, dict) else None)
        raise MossCheckpointError(
            f"{path} is a GPTQ-quantized MOSS checkpoint (wbits={bits}, groupsize={group}). Its weights need "
            "MOSS's own Triton kernels on a CUDA GPU, which mosslm does not run. Use the unquantized release "
            "instead (fnlp/moss-moon-003-sft or fnlp/moss-moon-003-sft-plugin, about 32 GB in fp16; loaded "
            "in bf16 or fp32 here), or convert that one with your own quantizer.")


def codegen_config(config: dict[str, Any], **overrides: Any):
    """A transformers CodeGenConfig for a MOSS config.json, checked for what CodeGen can run."""
    from transformers import CodeGenConfig

    unknown = sorted(k for k in config if k not in _CODEGEN_KEYS and k not in _IGNORED_KEYS
                     and k not in ("wbits", "groupsize", "quantization_config"))
    if unknown and tuple(unknown) not in _reported:  # the network's shape comes from the keys above
        _reported.add(tuple(unknown))
        print(f"note: ignoring MOSS config key(s) CodeGen has no use for: {', '.join(unknown)}", file=sys.stderr)
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head") if k not in config]
    if missing:
        raise MossCheckpointError(f"config.json lacks {', '.join(missing)}")
    if config.get("tie_word_embeddings", False):
        raise MossCheckpointError("tie_word_embeddings is true, but MOSS-moon-003 has an untied lm_head")
    n_embd, n_head = config["n_embd"], config["n_head"]
    if n_embd % n_head or n_head % MP_NUM:
        raise MossCheckpointError(f"n_embd {n_embd} and n_head {n_head}: the fused qkv layout needs n_head "
                                  f"divisible by {MP_NUM} and n_embd by n_head")
    rotary = config.get("rotary_dim")
    if rotary is not None and (rotary % 2 or rotary > n_embd // n_head):
        raise MossCheckpointError(f"rotary_dim {rotary} must be even and at most the head size {n_embd // n_head}")
    kwargs = {k: config[k] for k in _CODEGEN_KEYS if k in config}
    kwargs.update(overrides)
    return CodeGenConfig(**kwargs, tie_word_embeddings=False)


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(path: Path):
    """MOSS's tokenizer from vocab.json + merges.txt and its added tokens, as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_file, merges_file = path / "vocab.json", path / "merges.txt"
    for f in (vocab_file, merges_file):
        if not f.is_file():
            raise MossCheckpointError(f"{path} has no {f.name}: a MOSS checkpoint needs vocab.json and merges.txt")
    settings = _read_json(path / "tokenizer_config.json")
    added: dict[str, int] = {}  # content -> id, from both places the released files keep them
    for token_id, info in (settings.get("added_tokens_decoder") or {}).items():
        if _token_content(info) is not None:
            added[_token_content(info)] = int(token_id)
    added.update({k: int(v) for k, v in _read_json(path / "added_tokens.json").items()})
    vocab, merges = models.BPE.read_file(str(vocab_file), str(merges_file))
    for content, token_id in added.items():
        if vocab.get(content, token_id) != token_id:
            raise MossCheckpointError(f"added token {content!r} has id {token_id} but vocab.json gives it "
                                      f"{vocab[content]}")
        vocab[content] = token_id  # at its released id, even past gaps
    missing = [t for t in protocol.TERMINATORS if t not in vocab]
    if missing:
        raise MossCheckpointError(f"the tokenizer in {path} lacks the MOSS terminators {', '.join(missing)}")
    prefix_space = bool(settings.get("add_prefix_space", False))
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    names = {**{k: _token_content(v) for k, v in settings.items()
                if k in ("bos_token", "eos_token", "unk_token", "pad_token")},
             **{k: _token_content(v) for k, v in _read_json(path / "special_tokens_map.json").items()
                if k in ("bos_token", "eos_token", "unk_token", "pad_token")}}
    names = {k: v for k, v in names.items() if v is not None}
    names.setdefault("eos_token", protocol.EOM)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **names)
    # Added tokens are matched whole in any text, as MOSS's own tokenizer did.
    fast.add_special_tokens({"additional_special_tokens": sorted(added, key=added.get)})
    fast.model_max_length = int(settings.get("model_max_length", protocol.MOSS_CONTEXT_LENGTH))
    fast.chat_template = protocol.chat_template("moss")
    return fast


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MossCheckpointError(f"{path} is not valid JSON: {e}") from None
    return value if isinstance(value, dict) else {}


def load(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a MOSS-moon-003 folder, without running any of its code."""
    from transformers import CodeGenForCausalLM, GenerationConfig

    config = read_config(path) or {}
    refuse_quantized(config, path)
    tokenizer = load_tokenizer(path)
    eom = tokenizer.convert_tokens_to_ids(protocol.EOM)
    # The released config names the same ids; where one is missing, CodeGen's GPT-2 defaults would be wrong.
    bos = config.get("bos_token_id", tokenizer.bos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    cfg = codegen_config(config, bos_token_id=bos, eos_token_id=eom, pad_token_id=pad)
    if max(tokenizer.get_vocab().values()) >= cfg.vocab_size:
        raise MossCheckpointError(f"the tokenizer has ids up to {max(tokenizer.get_vocab().values())} but the "
                                  f"model only {cfg.vocab_size} embeddings")
    model = CodeGenForCausalLM.from_pretrained(path, config=cfg, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eom, pad_token_id=pad,
        do_sample=True, **protocol.MOSS_GENERATION_DEFAULTS)
    return model, tokenizer
