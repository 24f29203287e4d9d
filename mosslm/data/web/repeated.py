"""Remove lines that repeat across many pages of one site (line-level dedup over a shard, as CCNet does).

Site slogans, menus, "欢迎访问…" banners and footers that no keyword table knows still give themselves away by
recurring on page after page of the same site, while an article's sentences occur once. `fit` counts, per site
(the url's host, else the source file), in how many documents each normalised line occurs (lines that earlier
steps trimmed, kept in `doc.removed`, count too); `apply` cuts the
lines seen in at least `min_docs` of them. Lines are kept as 8-byte hashes, so memory grows with the number of
distinct lines in a shard, not with their length.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .document import Document, Dropped

_DIGITS = re.compile(r"\d")
_NOT_TEXT = re.compile(r"[\W_]+")  # spaces and punctuation: "首页 | 新闻" and "首页｜新闻" are one line


@dataclass
class RepeatedLinesConfig:
    min_docs: int = 3       # a line seen in this many documents of one site is site furniture
    min_chars: int = 2      # lines with fewer normalised characters are never cut (too short to tell)
    # Lines the boilerplate step cut still count as seen on their page, except those of these rules.
    uncounted_rules: tuple[str, ...] = ("boilerplate.related",)


def normalise_line(line: str) -> str:
    """The line as compared: NFKC, lower case, every digit 0 (dates and counters vary), no spaces or punctuation."""
    text = unicodedata.normalize("NFKC", line).lower()
    return _NOT_TEXT.sub("", _DIGITS.sub("0", text))


def site_of(doc: Document) -> str:
    """The url's host without "www.", or the source file when there is no usable url."""
    if doc.url:
        host = (urlsplit(doc.url).hostname or "").lower()
        if host:
            return host.removeprefix("www.")
    return doc.source


def _hash(site: str, norm: str) -> bytes:
    return hashlib.blake2b(f"{site}\x00{norm}".encode(), digest_size=8).digest()


class RepeatedLines:
    """Fit on a shard of documents, then apply to each of them."""

    def __init__(self, cfg: RepeatedLinesConfig | None = None):
        self.cfg = cfg or RepeatedLinesConfig()
        if self.cfg.min_docs < 2:
            raise ValueError(f"repeated.min_docs must be >= 2 (a line always occurs in its own document), "
                             f"got {self.cfg.min_docs}")
        self._docs_with: Counter[bytes] = Counter()
        self._fitted = False

    def _line_keys(self, doc: Document) -> set[bytes]:
        site = site_of(doc)
        keys = set()
        # The page as it was: lines an earlier step already cut still count, or a banner that the boilerplate
        # rules cut on most pages of a site would look rare on the few pages where they missed it. Not the
        # headlines of "related news" lists: they are other articles' titles, which must not look site-wide.
        earlier = [part for rule, removed in doc.removed
                   if rule.startswith("boilerplate.") and rule not in self.cfg.uncounted_rules
                   for part in removed.split("\n")]
        for line in doc.text.split("\n") + earlier:
            norm = normalise_line(line)
            if len(norm) >= self.cfg.min_chars:
                keys.add(_hash(site, norm))
        return keys

    def add(self, doc: Document) -> None:
        """Count one more document (each distinct line once per document)."""
        self._docs_with.update(self._line_keys(doc))
        self._fitted = True

    def fit(self, docs: Iterable[Document]) -> None:
        """Count the lines of these documents, forgetting earlier counts."""
        self._docs_with.clear()
        for doc in docs:
            self.add(doc)
        self._fitted = True

    def apply(self, doc: Document) -> Document | Dropped:
        """The document without its lines that recur in at least min_docs documents of its site."""
        if not self._fitted:
            raise RuntimeError("RepeatedLines.apply before fit: fit it on the shard's documents first")
        site = site_of(doc)
        kept: list[str] = []
        cut = 0
        for line in doc.text.split("\n"):
            norm = normalise_line(line)
            if len(norm) >= self.cfg.min_chars and self._docs_with[_hash(site, norm)] >= self.cfg.min_docs:
                doc.trim("repeated.line", line)
                cut += 1
            else:
                kept.append(line)
        doc.signals["repeated"] = {"lines_cut": cut}
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        if not text:
            return Dropped("repeated.empty", f"all {cut} lines recur on {self.cfg.min_docs}+ pages of {site}", doc)
        doc.text = text
        return doc
