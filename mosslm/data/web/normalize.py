"""Unicode and whitespace normalisation that keeps Chinese text Chinese.

Why NFC and not NFKC: NFKC folds the full-width punctuation Chinese is written with (，。：；！？（）) into ASCII
(,.:;!?()), which changes the text's typography and breaks every later rule that looks for Chinese sentence ends.
NFC only composes characters. What NFKC would be wanted for, full-width letters and digits (ＡＢＣ１２３, common in
Chinese pages), is mapped to ASCII explicitly, and nothing else.

Also: control characters and invisible format characters (zero-width spaces, BOMs, soft hyphens, bidi marks) are
removed, keeping "\\n" and "\\t"; every line break becomes "\\n"; other space characters (NBSP, the ideographic
space U+3000, ...) become " " and runs of spaces one; lines are stripped and runs of blank lines become one.
Optionally traditional Chinese is converted to simplified with OpenCC.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

from .document import Document, Dropped

_LINE_BREAK_CHARS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # CR, VT, FF, separators, NEL, LS, PS
_LINE_BREAKS = re.compile(f"\r\n|[{_LINE_BREAK_CHARS}]")
_SPACE_RUNS = re.compile(r" {2,}")
_BLANK_LINE_RUNS = re.compile(r"\n{3,}")
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")  # emoji, rare CJK: text with them needs the slower pattern
_KEEP = set("\n\t" + _LINE_BREAK_CHARS)  # kept by the table; line breaks are unified before it
_FULLWIDTH_OFFSET = 0xFF01 - 0x21  # U+FF21 "Ａ" - U+0041 "A"


@dataclass
class NormalizeConfig:
    traditional_to_simplified: bool = False
    opencc_config: str = "t2s"          # OpenCC conversion: t2s, tw2s (Taiwan), hk2s (Hong Kong), tw2sp (+phrases)
    fullwidth_to_halfwidth: bool = True  # ＡＢＣ１２３ -> ABC123 (letters and digits only, never punctuation)

    def __post_init__(self) -> None:
        if self.traditional_to_simplified:
            import opencc

            known = sorted(c.removesuffix(".json") for c in opencc.CONFIGS)
            if self.opencc_config.removesuffix(".json") not in known:
                raise ValueError(f"normalize.opencc_config {self.opencc_config!r} is not an OpenCC config; "
                                 f"known: {', '.join(known)}")


@cache
def _char_table(fullwidth: bool) -> tuple[dict[int, str], re.Pattern[str], re.Pattern[str]]:
    """Every single-character change (to "" for removal), with two patterns that find them: one for text that has
    only BMP characters and one for any text (a regex class with astral ranges is several times slower to scan).
    Built from the Unicode database, once per process."""
    table: dict[int, str] = {}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        if ch in _KEEP:
            continue
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf"):      # control and format (zero-width, BOM, bidi) characters: invisible noise
            table[cp] = ""
        elif category == "Zs" and ch != " ":  # NBSP, U+3000 ideographic space, thin spaces...
            table[cp] = " "
    if fullwidth:
        for start, end in (("０", "９"), ("Ａ", "Ｚ"), ("ａ", "ｚ")):
            for cp in range(ord(start), ord(end) + 1):
                table[cp] = chr(cp - _FULLWIDTH_OFFSET)
    ranges: list[list[int]] = []
    for cp in sorted(table):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])

    def klass(rs: list[list[int]]) -> str:
        return "[" + "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in rs) + "]"

    bmp = [r for r in ranges if r[1] <= 0xFFFF]
    return table, re.compile(klass(bmp)), re.compile(klass(ranges))


@cache
def _converter(config: str) -> Any:
    import opencc

    return opencc.OpenCC(config)


def normalize_text(text: str, cfg: NormalizeConfig) -> tuple[str, int]:
    """The normalised text, and how many invisible (control/format) characters were removed."""
    text = _LINE_BREAKS.sub("\n", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    table, bmp_only, any_plane = _char_table(cfg.fullwidth_to_halfwidth)
    pattern = any_plane if _ASTRAL.search(text) else bmp_only
    removed = 0
    if pattern.search(text):  # most text needs no change: then it is not rewritten
        before = len(text)
        text = pattern.sub(lambda m: table[ord(m.group())], text)
        removed = before - len(text)  # every other change in the table is one character for one
    if cfg.traditional_to_simplified:
        text = _converter(cfg.opencc_config).convert(text)
    lines = (_SPACE_RUNS.sub(" ", line).strip(" \t") for line in text.split("\n"))
    text = _BLANK_LINE_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")
    return text, removed


def normalize(doc: Document, cfg: NormalizeConfig) -> Document | Dropped:
    """Normalise the document's text in place; drop it ("normalize.empty") if nothing is left."""
    chars_in = len(doc.text)
    doc.text, removed = normalize_text(doc.text, cfg)
    if removed:
        doc.signals["invisible_chars_removed"] = removed
    if not doc.text:
        return Dropped("normalize.empty", f"nothing left after normalisation ({chars_in} chars in)", doc)
    return doc
