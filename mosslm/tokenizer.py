"""Tokenizers: train our byte-level BPE (HF `tokenizers`) and load any HF one.

Pre-tokenization keeps CJK runs apart from Latin words, splits digits one by
one (so numbers generalise) and keeps whitespace and code intact; the byte
level makes every string round-trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import protocol

# Han/Kana/Hangul runs; single digits; Latin-like words with an optional leading
# space; punctuation runs; newlines; other whitespace.
PRETOKENIZE_PATTERN = (
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+"
    r"|\p{N}"
    r"| ?[^\s\p{N}\p{P}\p{S}\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+"
    r"| ?[\p{P}\p{S}]+"
    r"|\s*\n"
    r"|\s+(?!\S)"
    r"|\s+"
)

SPECIAL_TOKENS = [protocol.ENDOFTEXT, protocol.PAD, *protocol.TERMINATORS, *protocol.ROLE_TAGS]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2,
                    show_progress: bool = False):
    """Train a byte-level BPE and wrap it as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=protocol.ENDOFTEXT, eos_token=protocol.ENDOFTEXT,
        pad_token=protocol.PAD, clean_up_tokenization_spaces=False)
    # Terminators and role tags are single tokens, never split by BPE.
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    fast.chat_template = protocol.chat_template("mosslm")
    return fast


def train_from_files(inputs: list[str], vocab_size: int, out: str, min_frequency: int = 2,
                     show_progress: bool = True):
    """`moss tokenizer train`: texts from cleaned-shard folders (`moss data clean --out`), .txt, .jsonl or
    conversation files -> an HF tokenizer folder. The texts stream into the trainer, never all in memory."""
    from itertools import chain

    from .data.text import read_texts
    from .paths import atomic_dir

    for path in inputs:  # every input is checked before training starts, not when the trainer reaches it
        if not Path(path).exists():
            raise FileNotFoundError(f"training data not found: {path}")
    texts = chain.from_iterable(read_texts(path) for path in inputs)
    first = next(texts, None)
    if first is None:
        raise ValueError(f"no text found in {inputs}")
    tok = train_tokenizer(chain([first], texts), vocab_size=vocab_size, min_frequency=min_frequency,
                          show_progress=show_progress)
    with atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
    return tok


def load_any(name_or_path: str):
    """A tokenizer from a folder, a .gguf file, or a downloaded model name."""
    from transformers import AutoTokenizer

    from .download import resolve

    p = resolve(name_or_path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    return AutoTokenizer.from_pretrained(Path(p))


def compression(tokenizer, texts: list[str]) -> dict[str, float]:
    """Bytes and characters per token over the texts (higher = fewer tokens)."""
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"tokens": tokens, "bytes_per_token": nbytes / tokens if tokens else 0.0,
            "chars_per_token": chars / tokens if tokens else 0.0}


def eval_table(named: dict[str, object], texts: list[str]) -> str:
    """Side-by-side table: per language, bytes/token and chars/token for each tokenizer."""
    from .data.text import language_of

    by_lang = {"zh": [t for t in texts if language_of(t) == "zh"], "en": [t for t in texts if language_of(t) == "en"]}
    names = list(named)
    width = max(12, *(len(n) for n in names)) + 2
    lines = [f"{'':<20}" + "".join(f"{n:>{width}}" for n in names)]
    for lang, subset in by_lang.items():
        stats = {n: compression(tok, subset) for n, tok in named.items()}
        lines.append(f"{'Chinese' if lang == 'zh' else 'English'} ({len(subset)} texts)")
        for metric in ("bytes_per_token", "chars_per_token", "tokens"):
            fmt = "d" if metric == "tokens" else ".3f"
            lines.append(f"  {metric:<18}" + "".join(f"{stats[n][metric]:>{width}{fmt}}" for n in names))
    lines.append(f"{'vocab size':<20}" + "".join(f"{len(tok):>{width}d}" for tok in named.values()))
    return "\n".join(lines)
