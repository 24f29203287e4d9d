"""`moss export --format gguf`: one file that llama.cpp (and Ollama, with the Modelfile beside it) loads.

Llama-architecture models (ours, SmolLM2, Llama, Mistral). Matrices are written as f16, Q8_0 or
Q4_0 (every matrix, the embedding too, as `llama-quantize --pure` does; the gguf package quantizes),
norms as f32. q/k rows are permuted from transformers' rotate-half pairing to llama.cpp's interleaved
one (transformers' GGUF loader undoes it). The tokenizer goes in as byte-level BPE ("gpt2": tokens,
types, merges) with its special tokens, the MOSS terminators as end-of-generation tokens and the chat
template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .. import protocol
from .linear import QuantError

QUANTS = ("f16", "q8_0", "q4_0")


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for the pre-tokenizer: ours splits CJK and digits the way Qwen2's regex does."""
    from ..tokenizer import PRETOKENIZE_PATTERN

    text = tokenizer.backend_tokenizer.to_str()
    pre = json.dumps(json.loads(text).get("pre_tokenizer"))
    if json.dumps(PRETOKENIZE_PATTERN)[1:-1] in pre:
        return "qwen2"
    if '"individual_digits": true' in pre:
        return "smollm"
    return "gpt-2"


def _permute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotate-half q/k rows -> llama.cpp's interleaved pairs, per head."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tensor_names(config) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(config.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def _tokenizer_metadata(writer, tokenizer) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        if i < len(tokens):
            tokens[i] = tok
    if any(t is None for t in tokens):
        raise QuantError("the tokenizer's ids are not contiguous; cannot write a GGUF vocabulary")
    special = set(tokenizer.all_special_tokens) | {t for t in protocol.ROLE_TAGS if t in vocab} \
        | {t for t in (protocol.EOH, protocol.EOT, protocol.EOC, protocol.EOR, protocol.EOM) if t in vocab}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise QuantError(f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    eom = vocab.get(protocol.EOM)
    eos = eom if eom is not None else tokenizer.eos_token_id
    if eos is not None:
        writer.add_eos_token_id(eos)
    if eom is not None:
        writer.add_eot_token_id(eom)  # llama.cpp stops at end-of-turn tokens too
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def export_gguf(model, tokenizer, out: Path, quant: str = "f16", name: str = "mosslm") -> Path:
    """Write the model as a GGUF file (atomically: a temp file, then a rename)."""
    import gguf

    if quant not in QUANTS:
        raise QuantError(f"--quant must be one of {', '.join(QUANTS)} (got {quant!r})")
    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise QuantError(f"GGUF export writes the llama architecture (ours, SmolLM2, Llama, Mistral); "
                         f"this model is {config.model_type!r}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    qtype = {"f16": None, "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[quant]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        rope = getattr(config, "rope_parameters", None) or {}
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(file_type)
        _tokenizer_metadata(writer, tokenizer)
        names = _tensor_names(config)
        state = {k: v.detach().float() for k, v in model.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # llama.cpp reads token_embd for the output when it is absent
        for key, tensor in state.items():
            if key not in names:
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                raise QuantError(f"no GGUF name for tensor {key!r}")
            data = tensor.numpy()
            if key.endswith("q_proj.weight"):
                data = _permute_rotary(data, heads)
            elif key.endswith("k_proj.weight"):
                data = _permute_rotary(data, kv_heads)
            if data.ndim == 1:
                writer.add_tensor(names[key], data.astype(np.float32))
            elif qtype is None:
                writer.add_tensor(names[key], data.astype(np.float16))
            else:
                writer.add_tensor(names[key], gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def export(model_path: str, out: str, quant: str = "f16", modelfile: bool = True) -> list[Path]:
    """`moss export --format gguf`: the GGUF file, and an Ollama Modelfile beside it."""
    from .. import model as modellib
    from .folder import quantization_spec

    source = Path(model_path).expanduser()
    if quantization_spec(source):
        raise QuantError(f"{source} is a `moss quantize` folder; export its full-precision source "
                         "(--quant q8_0/q4_0 quantizes for llama.cpp)")
    loaded = modellib.load(source, dtype=torch.float32)
    path = export_gguf(loaded.model, loaded.tokenizer, Path(out), quant, name=source.stem)
    written = [path]
    if modelfile:
        mf = path.with_name("Modelfile")
        text = protocol.ollama_modelfile(path.name, loaded.protocol or "mosslm") if loaded.speaks_moss else \
            f"FROM ./{path.name}\n"
        tmp = mf.with_name(mf.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, mf)
        written.append(mf)
    return written
