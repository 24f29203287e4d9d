"""A tiny, randomly initialised checkpoint written in the exact MOSS-moon-003 folder layout.

What is written follows the released folders' description (../shared/docs/facts.md):
config.json with `model_type: moss`, `MossForCausalLM` and an `auto_map`; fp16
weights in sharded `pytorch_model-*.bin` files with an index, named
`transformer.h.N.attn.qkv_proj`, `mlp.fc_in`, ..., a persisted
`attn.causal_mask` buffer, an untied `lm_head` with bias; a GPT-2-style
`vocab.json` + `merges.txt` with `<|endoftext|>` last and MOSS's terminators as
added tokens. The folder's own Python files raise when imported, so a test
fails loudly if anything runs a checkpoint's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mosslm import protocol

CUSTOM_CODE = "raise RuntimeError('a MOSS checkpoint\\'s own code was imported; mosslm must never run it')\n"
ADDED_TOKENS = ("<eoh>", "<eot>", "<eoc>", "<eor>", "<eom>", "<eoa>")


def tokenizer_texts() -> list[str]:
    from conftest import bilingual_corpus

    meta = protocol.meta_instruction("moss", plugins=["Calculate"])
    return bilingual_corpus(200) + [meta] * 5 + ["<|Human|>: 你好<eoh>\n<|MOSS|>: 你好！<eom>\n"] * 5


def write_tokenizer(folder: Path) -> dict[str, int]:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(tokenizer_texts(), vocab_size=700, min_frequency=2, show_progress=False)
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["<|endoftext|>"] = len(vocab)  # last in vocab.json, as in GPT-2 and MOSS
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    added = {tok: len(vocab) + i for i, tok in enumerate(ADDED_TOKENS)}
    (folder / "added_tokens.json").write_text(json.dumps(added))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 1024, "tokenizer_class": "MossTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_moss.MossTokenizer", None]}}))
    return {**vocab, **added}


def moss_config(vocab_size: int, n_embd: int = 64, n_head: int = 8, n_layer: int = 2, rotary_dim: int = 4,
                n_positions: int = 1024, **extra) -> dict:
    return {
        "_name_or_path": "tiny-moss-layout", "activation_function": "gelu_new",
        "architectures": ["MossForCausalLM"], "attn_pdrop": 0.0,
        "auto_map": {"AutoConfig": "configuration_moss.MossConfig", "AutoModel": "modeling_moss.MossModel",
                     "AutoModelForCausalLM": "modeling_moss.MossForCausalLM"},
        "bos_token_id": vocab_size - 1, "embd_pdrop": 0.0, "eos_token_id": vocab_size + 4,
        "gradient_checkpointing": False, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
        "model_type": "moss", "n_ctx": n_positions, "n_embd": n_embd, "n_head": n_head, "n_inner": None,
        "n_layer": n_layer, "n_positions": n_positions, "resid_pdrop": 0.0, "rotary_dim": rotary_dim,
        "scale_attn_weights": True, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "tie_word_embeddings": False, "tokenizer_class": "MossTokenizer", "torch_dtype": "float16",
        "transformers_version": "4.25.1", "use_cache": True, "vocab_size": vocab_size, **extra}


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp16 weights under the released names; scales keep a random network's logits informative."""
    g = torch.Generator().manual_seed(seed)
    e, v, p = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]

    def rnd(*shape, scale=0.08):
        return (torch.randn(*shape, generator=g) * scale).half()

    sd = {"transformer.wte.weight": rnd(v, e, scale=0.5)}
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        sd[h + "ln_1.weight"] = (1 + rnd(e, scale=0.1).float()).half()
        sd[h + "ln_1.bias"] = rnd(e, scale=0.1)
        sd[h + "attn.causal_mask"] = torch.tril(torch.ones(p, p, dtype=torch.bool)).view(1, 1, p, p)
        sd[h + "attn.qkv_proj.weight"] = rnd(3 * e, e, scale=0.3)
        sd[h + "attn.out_proj.weight"] = rnd(e, e)
        sd[h + "mlp.fc_in.weight"] = rnd(4 * e, e)
        sd[h + "mlp.fc_in.bias"] = rnd(4 * e, scale=0.02)
        sd[h + "mlp.fc_out.weight"] = rnd(e, 4 * e)
        sd[h + "mlp.fc_out.bias"] = rnd(e, scale=0.02)
    sd["transformer.ln_f.weight"] = (1 + rnd(e, scale=0.1).float()).half()
    sd["transformer.ln_f.bias"] = rnd(e, scale=0.1)
    sd["lm_head.weight"] = rnd(v, e, scale=0.3)
    sd["lm_head.bias"] = rnd(v, scale=0.1)
    return sd


def write_tiny_moss_checkpoint(folder: Path, seed: int = 0, **config_extra) -> tuple[Path, dict, dict]:
    """Write the folder; returns (folder, config, state dict as written)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    padded = (max(vocab.values()) + 1 + 63) // 64 * 64  # MOSS pads its embedding rows too
    cfg = moss_config(padded, **config_extra)
    cfg["bos_token_id"], cfg["eos_token_id"] = vocab["<|endoftext|>"], vocab["<eom>"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = random_weights(cfg, seed)
    names = list(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, folder / shard)
        weight_map.update({k: shard for k in keys})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for name in ("configuration_moss.py", "modeling_moss.py", "tokenization_moss.py"):
        (folder / name).write_text(CUSTOM_CODE)
    return folder, cfg, sd
