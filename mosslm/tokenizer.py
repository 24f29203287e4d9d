"""Tokenizers: train our byte-level BPE (HF `tokenizers`) and load any HF one.

Pre-tokenization keeps CJK runs apart from Latin words, splits digits one by
one (so numbers generalise) and keeps whitespace and code intact; the byte
level makes every string round-trip.
"""

from __future__ import annotations

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
    from transformers import PreTrainedTokenizerFast

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
