"""Document quality filters: Gopher, C4 and FineWeb heuristics, adapted so that they also judge Chinese.

Chinese has no spaces, so where the English rules count words the Chinese ones count characters, and n-gram
rules run on characters (a Latin word inside Chinese text is one token). Each rule has its own threshold in
`QualityConfig`; every measured value is written to `doc.signals["quality"]`, also for kept documents, so a
team can retune thresholds from the output. The first failing rule (in the order of `quality_filter`) names the
drop: "quality.<rule>".
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cache
from itertools import compress
from typing import Any

from .boilerplate import CJK_CLASS, load_table, pattern_table, phrase_table
from .document import Document, Dropped

_CJK = re.compile(f"[{CJK_CLASS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_EN_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")  # on lower-cased text
_SPACE = re.compile(r"\s")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter of any script
_CHAR_TOKEN = re.compile(f"[{CJK_CLASS}]|[A-Za-z0-9]+")
_ELLIPSIS = re.compile(r"\.\.\.|…")
_LINE_END_PUNCT = "。！？…!?.\"'”’」』"
_BULLETS = "•·●○◆◇■□▪▫►▶▸-*–—★☆✓✔➤"
_EXTRA_SYMBOLS = set("#*@_\\|~^")


@dataclass
class QualityConfig:
    char_langs: tuple[str, ...] = ("zh", "ja", "ko")  # judged by characters; every other language by words
    lang_cjk_share: float = 0.3          # when doc.lang is None: this cjk_share (see below) makes it zh, else en
    min_chars: int = 80                  # zh: non-space characters (Gopher's 50 words, in Chinese)
    max_chars: int = 200_000
    min_words: int = 50                  # en (Gopher)
    max_words: int = 100_000
    min_cjk_share: float = 0.3           # zh: CJK characters among CJK characters + Latin words: a Latin word
    #                                      weighs one character, so mixed zh/en text stays and English does not
    min_mean_word_length: float = 3.0    # en (Gopher)
    max_mean_word_length: float = 10.0
    min_stopwords_en: int = 2            # distinct English function words (Gopher)
    min_stopwords_zh: int = 3            # distinct Chinese function words (的, 了, 是, ...)
    min_alpha_word_share: float = 0.8    # en: words with a letter (Gopher)
    max_hash_ellipsis_ratio: float = 0.1  # "#", "..." and "…" per word (zh: per character token)
    max_ellipsis_line_share: float = 0.3  # lines ending in an ellipsis (Gopher)
    max_bullet_line_share: float = 0.9   # lines starting with a bullet (Gopher)
    min_punct_line_share: float = 0.12   # lines ending in sentence punctuation, 。！？…” count (FineWeb)
    short_line_chars_en: int = 30        # a shorter line is "short" (FineWeb) ...
    short_line_chars_zh: int = 10        # ... and in Chinese, this many characters
    max_short_line_share: float = 0.67
    max_dup_line_share: float = 0.3      # lines that occur more than once (Gopher)
    max_dup_line_char_share: float = 0.2  # characters in such lines
    top_ngram_n: tuple[int, ...] = (2, 3, 4)  # share of text in the most frequent n-gram (Gopher) ...
    top_ngram_max: tuple[float, ...] = (0.20, 0.18, 0.16)
    dup_ngram_n_en: tuple[int, ...] = (5, 6, 7, 8, 9, 10)  # share of text in repeated word n-grams (Gopher)
    dup_ngram_max_en: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)
    dup_ngram_n_zh: tuple[int, ...] = (8, 10, 12, 14, 16)  # character n-grams: ~1.6 characters per word
    dup_ngram_max_zh: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11)
    max_spam_share: float = 0.05         # characters inside ad/spam phrases (resources/clean/ads_phrases.txt)
    max_symbol_share: float = 0.05       # symbol characters (★▶■$+...) among non-space characters
    max_curly_share: float = 0.01        # "{" and "}": code and templates, not prose (C4 drops any)
    max_js_notice_share: float = 0.2     # text in "please enable JavaScript" lines (C4)
    drop_lorem_ipsum: bool = True        # placeholder text (C4)

    def __post_init__(self) -> None:
        for ns, limits in (("top_ngram_n", "top_ngram_max"), ("dup_ngram_n_en", "dup_ngram_max_en"),
                           ("dup_ngram_n_zh", "dup_ngram_max_zh")):
            if len(getattr(self, ns)) != len(getattr(self, limits)):
                raise ValueError(f"quality.{ns} and quality.{limits} must have the same length, got "
                                 f"{list(getattr(self, ns))} and {list(getattr(self, limits))}")


class _Tokens:
    """A token sequence as one string of stand-in characters (one per distinct token), so n-grams are cheap
    string slices, with each token's length in characters for the character-weighted shares."""

    def __init__(self, tokens: list[str]):
        ids: dict[str, str] = {}
        # Stand-ins from the supplementary planes; a text with more distinct tokens than they hold (far past
        # max_words) reuses them, which only blurs its n-gram values.
        self.seq = "".join(ids.setdefault(t, chr(0x10000 + len(ids) % 0xF0000)) for t in tokens)
        self.lengths = [len(t) for t in tokens]
        self.total = sum(self.lengths)

    def grams(self, n: int) -> list[str]:
        return [self.seq[i:i + n] for i in range(len(self.seq) - n + 1)]


def _ngram_shares(tokens: _Tokens, top_ns: tuple[int, ...], dup_ns: tuple[int, ...]) -> tuple[dict, dict]:
    """For each n of top_ns, the share of token characters in the most frequent n-gram (occurrences times its
    length, 0 unless it repeats); for each n of dup_ns, the share covered by n-grams that occur more than once
    (overlaps counted once).

    Only the smallest n is counted at every position: an n-gram that repeats is made of shorter n-grams that
    all repeat, so each larger n is counted only where the last one repeated at both ends (exact, and fast).
    """
    top: dict[str, float] = {str(n): 0.0 for n in top_ns}
    dup: dict[str, float] = {str(n): 0.0 for n in dup_ns}
    seq, size = tokens.seq, len(tokens.seq)
    last_n, repeated = 0, None
    for n in sorted(set(top_ns) | set(dup_ns)):
        if size < n or (repeated is not None and not repeated):
            break  # nothing longer can repeat
        if repeated is None:
            positions: list[int] | range = range(size - n + 1)
        else:
            again = set(repeated)
            positions = [i for i in repeated if i + n - last_n in again and i + n <= size]
        counts = Counter(seq[i:i + n] for i in positions)
        repeated = [i for i in positions if counts[seq[i:i + n]] > 1]
        if n in top_ns and repeated:
            gram, count = counts.most_common(1)[0]
            at = seq.index(gram)
            top[str(n)] = count * sum(tokens.lengths[at:at + n]) / tokens.total
        if n in dup_ns:
            covered = bytearray(size)
            ones = b"\x01" * n
            for i in repeated:
                covered[i:i + n] = ones
            dup[str(n)] = sum(compress(tokens.lengths, covered)) / tokens.total
        last_n = n
    return top, dup


@cache
def _symbol_class() -> re.Pattern:
    """Every Unicode symbol character (categories Sm, Sc, Sk, So) of the BMP, and a few ASCII marks."""
    chars = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)).startswith("S")]
    return re.compile("[" + "".join(re.escape(c) for c in chars + sorted(_EXTRA_SYMBOLS)) + "]")


def measure(text: str, lang: str, cfg: QualityConfig) -> dict[str, Any]:
    """Every value the rules judge, for a text of this language."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    by_chars = lang in cfg.char_langs
    nonspace = len(text) - len(_SPACE.findall(text))
    cjk = len(_CJK.findall(text))
    latin_words = len(_LATIN_WORD.findall(text))
    lowered = text.lower()
    words = _EN_WORD.findall(lowered)
    token_list = _CHAR_TOKEN.findall(lowered) if by_chars else words
    tokens = _Tokens(token_list)
    top, dup = _ngram_shares(tokens, cfg.top_ngram_n, cfg.dup_ngram_n_zh if by_chars else cfg.dup_ngram_n_en)
    short_limit = cfg.short_line_chars_zh if by_chars else cfg.short_line_chars_en
    line_counts = Counter(lines)
    dup_lines = [line for line in lines if line_counts[line] > 1]
    stop_table = "quality_stopwords_zh.txt" if by_chars else "quality_stopwords_en.txt"
    if by_chars:
        stopwords = sum(1 for w in load_table(stop_table) if w in text)
    else:
        present = set(words)
        stopwords = sum(1 for w in load_table(stop_table) if w in present)
    js = pattern_table("quality_js_notices.txt")
    spam_chars = sum(len(m) for m in phrase_table("ads_phrases.txt").findall(text))
    n_lines = max(1, len(lines))
    n_tokens = max(1, len(token_list))
    spaced = text.split()
    line_chars = max(1, sum(map(len, lines)))
    values: dict[str, Any] = {
        "lang": lang,
        "chars": nonspace,
        "words": len(words),
        "cjk_share": cjk / max(1, cjk + latin_words),
        "mean_word_length": sum(len(w) for w in words) / max(1, len(words)),
        "stopwords": stopwords,
        "alpha_word_share": sum(1 for w in spaced if _ALPHA.search(w)) / max(1, len(spaced)),
        "hash_ellipsis_ratio": (text.count("#") + len(_ELLIPSIS.findall(text))) / n_tokens,
        "ellipsis_line_share": sum(1 for line in lines if line.endswith(("...", "…"))) / n_lines,
        "bullet_line_share": sum(1 for line in lines if line[0] in _BULLETS) / n_lines,
        "punct_line_share": sum(1 for line in lines if line[-1] in _LINE_END_PUNCT) / n_lines,
        "short_line_share": sum(1 for line in lines if _line_len(line, by_chars) < short_limit) / n_lines,
        "dup_line_share": len(dup_lines) / n_lines,
        "dup_line_char_share": sum(len(line) for line in dup_lines) / line_chars,
        "top_ngram": top,
        "dup_ngram": dup,
        "spam_share": spam_chars / max(1, nonspace),
        "symbol_share": len(_symbol_class().findall(text)) / max(1, nonspace),
        "curly_share": (text.count("{") + text.count("}")) / max(1, nonspace),
        "js_notice_share": sum(len(line) for line in lines if js.search(line)) / line_chars,
        "lorem_ipsum": "lorem ipsum" in lowered,
    }
    return {k: round(v, 4) if isinstance(v, float) else
            ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in values.items()}


def _line_len(line: str, by_chars: bool) -> int:
    if by_chars:
        return len(_CHAR_TOKEN.findall(line))  # CJK characters and Latin words
    return len(line)


def _language(doc: Document, cfg: QualityConfig) -> str:
    if doc.lang:
        return doc.lang
    cjk = len(_CJK.findall(doc.text))
    latin_words = len(_LATIN_WORD.findall(doc.text))
    return "zh" if cjk / max(1, cjk + latin_words) >= cfg.lang_cjk_share else "en"


def _first_failure(v: dict[str, Any], cfg: QualityConfig) -> tuple[str, str] | None:
    """The first rule the measured values break, as (rule, detail)."""
    by_chars = v["lang"] in cfg.char_langs
    # First what the page is instead of prose (placeholder text, a browser notice, code), then its length, then
    # symbol soup and spam, so that the drop names the page's problem; then the statistics of prose.
    checks: list[tuple[str, bool, str]] = [
        ("lorem_ipsum", cfg.drop_lorem_ipsum and v["lorem_ipsum"], "contains 'lorem ipsum'"),
        ("javascript", v["js_notice_share"] > cfg.max_js_notice_share,
         f"{v['js_notice_share']} > {cfg.max_js_notice_share}"),
        ("curly_brackets", v["curly_share"] > cfg.max_curly_share, f"{v['curly_share']} > {cfg.max_curly_share}"),
    ]
    if by_chars:
        checks += [("min_chars", v["chars"] < cfg.min_chars, f"{v['chars']} chars < {cfg.min_chars}"),
                   ("max_chars", v["chars"] > cfg.max_chars, f"{v['chars']} chars > {cfg.max_chars}")]
    else:
        checks += [("min_words", v["words"] < cfg.min_words, f"{v['words']} words < {cfg.min_words}"),
                   ("max_words", v["words"] > cfg.max_words, f"{v['words']} words > {cfg.max_words}")]
    checks += [
        ("symbols", v["symbol_share"] > cfg.max_symbol_share, f"{v['symbol_share']} > {cfg.max_symbol_share}"),
        ("hash_ellipsis", v["hash_ellipsis_ratio"] > cfg.max_hash_ellipsis_ratio,
         f"{v['hash_ellipsis_ratio']} > {cfg.max_hash_ellipsis_ratio}"),
        ("spam_words", v["spam_share"] > cfg.max_spam_share, f"{v['spam_share']} > {cfg.max_spam_share}"),
    ]
    if v["lang"] == "zh":
        checks.append(("cjk_share", v["cjk_share"] < cfg.min_cjk_share, f"{v['cjk_share']} < {cfg.min_cjk_share}"))
    elif not by_chars:
        checks += [("mean_word_length",
                    not cfg.min_mean_word_length <= v["mean_word_length"] <= cfg.max_mean_word_length,
                    f"{v['mean_word_length']} outside [{cfg.min_mean_word_length}, {cfg.max_mean_word_length}]"),
                   ("alpha_words", v["alpha_word_share"] < cfg.min_alpha_word_share,
                    f"{v['alpha_word_share']} < {cfg.min_alpha_word_share}")]
    if v["lang"] in ("zh", "en"):
        least = cfg.min_stopwords_zh if by_chars else cfg.min_stopwords_en
        checks.append(("stopwords", v["stopwords"] < least, f"{v['stopwords']} function words < {least}"))
    checks += [
        ("ellipsis_lines", v["ellipsis_line_share"] > cfg.max_ellipsis_line_share,
         f"{v['ellipsis_line_share']} > {cfg.max_ellipsis_line_share}"),
        ("bullet_lines", v["bullet_line_share"] > cfg.max_bullet_line_share,
         f"{v['bullet_line_share']} > {cfg.max_bullet_line_share}"),
        ("dup_lines", v["dup_line_share"] > cfg.max_dup_line_share,
         f"{v['dup_line_share']} > {cfg.max_dup_line_share}"),
        ("dup_line_chars", v["dup_line_char_share"] > cfg.max_dup_line_char_share,
         f"{v['dup_line_char_share']} > {cfg.max_dup_line_char_share}"),
    ]
    for n, limit in zip(cfg.top_ngram_n, cfg.top_ngram_max):
        share = v["top_ngram"][str(n)]
        checks.append(("top_ngram", share > limit, f"top {n}-gram share {share} > {limit}"))
    dup_n, dup_max = (cfg.dup_ngram_n_zh, cfg.dup_ngram_max_zh) if by_chars else (cfg.dup_ngram_n_en,
                                                                                   cfg.dup_ngram_max_en)
    for n, limit in zip(dup_n, dup_max):
        share = v["dup_ngram"][str(n)]
        checks.append(("dup_ngram", share > limit, f"repeated {n}-gram share {share} > {limit}"))
    checks += [
        ("punct_lines", v["punct_line_share"] < cfg.min_punct_line_share,
         f"{v['punct_line_share']} < {cfg.min_punct_line_share}"),
        ("short_lines", v["short_line_share"] > cfg.max_short_line_share,
         f"{v['short_line_share']} > {cfg.max_short_line_share}"),
    ]
    return next(((rule, detail) for rule, failed, detail in checks if failed), None)


def quality_filter(doc: Document, cfg: QualityConfig) -> Document | Dropped:
    """The document, with its measured values in doc.signals["quality"], or Dropped by the first failing rule."""
    values = measure(doc.text, _language(doc, cfg), cfg)
    doc.signals["quality"] = values
    failure = _first_failure(values, cfg)
    if failure:
        return Dropped(f"quality.{failure[0]}", failure[1], doc)
    return doc
