"""Cut page furniture out of extracted text, line by line and block by block.

Chinese news pages wrap a few paragraphs of article in navigation bars, "相关阅读" lists of headlines, share and
close widgets ("X 关闭", 分享到), bylines, ads and copyright footers. Each line is judged by named rules; each cut
line goes to `doc.trim("boilerplate.<rule>", line)` so `--explain` can show why. The word lists and patterns are
tables under resources/clean/ (boilerplate_*.txt, ads_*.txt), not code.

Line rules (a line must also be short, so that an article sentence that happens to mention 版权 or 分享 stays):
widget, footer, meta (bylines, dates), breadcrumb, ad, nav_bar (one line of short items between separators).
Block rules: related (a "related news" heading and the headlines after it), link_list (a run of at least
`link_list_min_run` short title-like lines: a link list without a heading). The article's own title is a single
title-like line, so it survives both, also right under a sidebar list of headlines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .document import Document, Dropped

RESOURCES = Path(__file__).resolve().parents[2] / "resources" / "clean"


@cache
def load_table(name: str) -> tuple[str, ...]:
    """The entries of a table file under resources/clean/: one per line, blank lines and # comments skipped."""
    path = RESOURCES / name
    if not path.is_file():
        raise FileNotFoundError(f"resource table not found: {path}")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


class PatternTable:
    """A table of regular expressions, matched case-insensitively. The ones anchored with "^" are tried at the
    start of the text only, so the others need not be tried at every position for them (speed)."""

    def __init__(self, patterns: tuple[str, ...]):
        anchored = [p[1:] for p in patterns if p.startswith("^")]
        floating = [p for p in patterns if not p.startswith("^")]
        never = re.compile(r"(?!)")
        self._anchored = re.compile("|".join(f"(?:{p})" for p in anchored), re.IGNORECASE) if anchored else never
        self._floating = re.compile("|".join(f"(?:{p})" for p in floating), re.IGNORECASE) if floating else never
        self._at_start = re.compile("|".join(f"(?:{p.removeprefix('^')})" for p in patterns), re.IGNORECASE)

    def search(self, text: str) -> bool:
        """Whether a pattern matches anywhere (an anchored one: at the start)."""
        return bool(self._anchored.match(text) or self._floating.search(text))

    def match(self, text: str) -> bool:
        """Whether a pattern matches at the start of the text."""
        return bool(self._at_start.match(text))


@cache
def pattern_table(name: str) -> PatternTable:
    return PatternTable(load_table(name))


class PhraseTable:
    """A table of plain phrases, found case-insensitively; a Latin phrase only as whole words ("sale", not
    "wholesale"). Two alternations (CJK, Latin) over the lower-cased text, longest phrase first and without
    look-arounds, so the regex engine can skip positions by first character (speed); word edges are checked
    on the few matches."""

    def __init__(self, phrases: tuple[str, ...]):
        ordered = sorted({p.lower() for p in phrases}, key=lambda p: (-len(p), p))
        never = re.compile(r"(?!)")
        latin = [re.escape(p) for p in ordered if p.isascii()]
        other = [re.escape(p) for p in ordered if not p.isascii()]
        self._patterns = [re.compile("|".join(ps)) if ps else never for ps in (other, latin)]

    def findall(self, text: str) -> list[str]:
        lowered = text.lower()
        hits = []
        for pattern in self._patterns:
            for m in pattern.finditer(lowered):
                before = lowered[m.start() - 1] if m.start() else ""
                after = lowered[m.end()] if m.end() < len(lowered) else ""
                if (_ascii_letter(m.group()[0]) and _ascii_letter(before)) or \
                        (_ascii_letter(m.group()[-1]) and _ascii_letter(after)):
                    continue
                hits.append(m.group())
        return hits


def _ascii_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


@cache
def phrase_table(name: str) -> PhraseTable:
    return PhraseTable(load_table(name))


# Han (with extension A and compatibility ideographs), kana and Hangul: the characters counted one by one.
CJK_CLASS = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK = re.compile(f"[{CJK_CLASS}]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’.-][A-Za-z0-9]+)*")
SENTENCE_END = "。！!；;.…"           # a line ending in one of these reads as prose, not as a headline or link
_EDGE_DECOR = re.compile(r"^[\s·•●○◆◇■□▪▫►▶▸>»\-–—*+]+|[\s·•>»\-–—]+$")
_LIST_NUMBER = re.compile(r"^(?:\d{1,2}[.、)）]|[(（]\d{1,2}[)）])\s*")
_TRAILING_DATE = re.compile(r"[\s(（\[【]*(?:\d{4}[-/.年])?\d{1,2}[-/.月]\d{1,2}日?(?:\s+\d{1,2}:\d{2})?[)）\]】]*$")
_NAV_SEPARATORS = re.compile(r"\s*[|｜·•/丨]\s*|\s{2,}|\t")
_CRUMB_SEPARATORS = re.compile(r"[>»›＞→]|\s/\s")
_QUOTED = re.compile(r"“[^”]{1,20}”|「[^」]{1,20}」|\"[^\"]{1,20}\"")
_HEADING_DECOR = re.compile(r"[\s【】\[\]<>《》:：·|\-–—>»=*#]+")


def units(line: str) -> int:
    """A language-fair length: CJK characters plus Latin words and numbers (one unit each)."""
    return len(_CJK.findall(line)) + len(_WORD.findall(line))


def _core(line: str) -> str:
    """A list item without its bullet, number and trailing date: what a headline list item says."""
    core = _LIST_NUMBER.sub("", _EDGE_DECOR.sub("", line))
    return _EDGE_DECOR.sub("", _TRAILING_DATE.sub("", core))


@dataclass
class BoilerplateConfig:
    link_list_min_run: int = 3       # this many title-like lines in a row are a link list
    title_max_units: int = 32        # longest headline or link text (CJK characters + Latin words)
    nav_max_units: int = 6           # longest Chinese navigation item in characters ("国内新闻") ...
    nav_max_words: int = 3           # ... and in words for other scripts ("World News")
    title_max_commas: int = 1        # a headline has at most this many commas; prose has more
    nav_bar_min_items: int = 4       # "首页 | 新闻 | 体育 | 财经": at least this many short items on one line
    related_max_items: int = 30      # how many headlines after a "相关阅读" heading are cut at most
    widget_max_units: int = 24       # longer lines are not share/close widgets
    meta_max_units: int = 40         # longer lines are not bylines or date lines
    footer_max_units: int = 70       # longer lines are not copyright or editor footers
    breadcrumb_max_units: int = 40
    ad_min_hits: int = 2             # ad phrases a line needs to be an ad ...
    ad_min_density: float = 0.10     # ... covering at least this share of its characters
    ad_short_units: int = 20         # a line this short is an ad with one phrase covering ad_short_density
    ad_short_density: float = 0.20
    max_link_share: float = 0.9      # drop ("boilerplate.link_page") a page whose kept lines are this title-like


def _is_nav_item(item: str, cfg: BoilerplateConfig) -> bool:
    """Short enough to be a menu entry: a headline is longer than this."""
    return units(item) <= (cfg.nav_max_units if _CJK.search(item) else cfg.nav_max_words)


def _is_title_like(line: str, cfg: BoilerplateConfig) -> bool:
    if len(line) > 12 * cfg.title_max_units:
        return False  # a paragraph: skip the regex work below
    core = _core(line)
    if not core or core[-1] in SENTENCE_END:
        return False
    n = units(core)
    return 0 < n <= cfg.title_max_units and core.count("，") + core.count(",") <= cfg.title_max_commas


def _line_rule(line: str, cfg: BoilerplateConfig) -> str | None:
    """The name of the line rule that cuts this line on its own, or None."""
    n = units(line)
    text = line.strip()
    if n <= cfg.widget_max_units and pattern_table("boilerplate_widgets.txt").search(text):
        return "widget"
    if n <= cfg.footer_max_units and pattern_table("boilerplate_footers.txt").search(text):
        return "footer"
    if n <= cfg.meta_max_units and pattern_table("boilerplate_meta.txt").search(text):
        return "meta"
    if n <= cfg.breadcrumb_max_units and _is_breadcrumb(text):
        return "breadcrumb"
    if _is_ad(text, n, cfg):
        return "ad"
    if _is_nav_bar(text, cfg):
        return "nav_bar"
    if _related_heading(text, cfg):
        return "related"
    return None


def _is_breadcrumb(text: str) -> bool:
    lowered = text.lower()
    return any(lowered.startswith(m) for m in load_table("boilerplate_breadcrumbs.txt")) \
        and bool(_CRUMB_SEPARATORS.search(text))


def _is_ad(text: str, n: int, cfg: BoilerplateConfig) -> bool:
    if pattern_table("ads_markers.txt").match(text):
        return True
    # A slogan in quotes is reported, not advertised: 监管部门提醒，“限时优惠”“免费领取”背后可能有陷阱。
    hits = phrase_table("ads_phrases.txt").findall(_QUOTED.sub("", text))
    if not hits:
        return False
    density = sum(len(h) for h in hits) / max(1, len(text.replace(" ", "")))
    if len(hits) >= cfg.ad_min_hits and density >= cfg.ad_min_density:
        return True
    return n <= cfg.ad_short_units and density >= cfg.ad_short_density


def _is_nav_bar(text: str, cfg: BoilerplateConfig) -> bool:
    if len(text) > 20 * cfg.nav_bar_min_items * cfg.nav_max_units:
        return False  # prose, not a menu
    items = [i for i in _NAV_SEPARATORS.split(text) if i]
    if len(items) < cfg.nav_bar_min_items and _CJK.search(text):
        items = text.split()  # Chinese prose has no spaces: single spaces separate menu items
    if len(items) < cfg.nav_bar_min_items:
        return False
    return all(_is_nav_item(i, cfg) and i[-1] not in SENTENCE_END for i in items)


@cache
def _headings() -> frozenset[str]:
    return frozenset(h.lower() for h in load_table("boilerplate_related_headings.txt"))


def _related_heading(text: str, cfg: BoilerplateConfig) -> bool:
    """A "相关阅读" heading on its own, or inline before one headline ("相关新闻：…")."""
    if len(text) > 80:
        return False  # headings are short (and this skips the regex work for paragraphs)
    bare = _HEADING_DECOR.sub(" ", text).strip().lower()
    if bare in _headings():
        return True
    words = bare.split()  # "More from The Harbor Post", "Related: Economy"
    for k in range(1, min(4, len(words))):
        if " ".join(words[:k]) in _headings() and len(words) - k <= 4 and _is_title_like(text, cfg):
            return True
    inline = re.match(r"^(.{1,24}?)[:：](.+)$", text)
    return bool(inline) and _HEADING_DECOR.sub(" ", inline.group(1)).strip().lower() in _headings() \
        and _is_title_like(inline.group(2), cfg)


def strip_boilerplate(doc: Document, cfg: BoilerplateConfig) -> Document | Dropped:
    """The document without its page furniture (cut lines are recorded with doc.trim), or Dropped when no
    article text is left."""
    lines = doc.text.split("\n")
    rules: list[str | None] = [_line_rule(line, cfg) if line.strip() else None for line in lines]
    title_like = [rules[i] is None and bool(line.strip()) and _is_title_like(line, cfg)
                  for i, line in enumerate(lines)]
    _mark_related_blocks(lines, rules, title_like, cfg)
    _mark_link_lists(lines, rules, title_like, cfg)
    counts: dict[str, int] = {}
    kept: list[str] = []
    for line, rule in zip(lines, rules):
        if rule is None:
            kept.append(line)
        else:
            doc.trim(f"boilerplate.{rule}", line)
            counts[rule] = counts.get(rule, 0) + 1
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    nonblank = [line for line in kept if line.strip()]
    doc.signals["boilerplate"] = {"lines_in": sum(1 for line in lines if line.strip()),
                                  "lines_cut": sum(counts.values()), "cut_by_rule": counts}
    if not text:
        return Dropped("boilerplate.empty", f"all {doc.signals['boilerplate']['lines_in']} lines were boilerplate",
                       doc)
    link_share = sum(title_like[i] for i, rule in enumerate(rules) if rule is None and lines[i].strip()) \
        / len(nonblank)
    doc.signals["boilerplate"]["link_share"] = round(link_share, 3)
    if link_share >= cfg.max_link_share and len(nonblank) > 1:
        return Dropped("boilerplate.link_page", f"link_share {link_share:.2f} >= {cfg.max_link_share}", doc)
    doc.text = text
    return doc


def _open_lines(rules: list[str | None], lines: list[str]) -> list[int]:
    """Indices of the lines not yet cut, blank lines left out (a blank line does not end a list)."""
    return [i for i, line in enumerate(lines) if rules[i] is None and line.strip()]


def _mark_related_blocks(lines: list[str], rules: list[str | None], title_like: list[bool],
                         cfg: BoilerplateConfig) -> None:
    """After a "related news" heading, the headlines that follow belong to it, however few."""
    for start in [i for i, r in enumerate(rules) if r == "related"]:
        taken = 0
        for i in range(start + 1, len(lines)):
            if not lines[i].strip():
                continue  # blank lines do not end the block; anything else that is not a headline does
            if rules[i] is not None or taken >= cfg.related_max_items or not title_like[i]:
                break
            rules[i] = "related"
            taken += 1


def _mark_link_lists(lines: list[str], rules: list[str | None], title_like: list[bool],
                     cfg: BoilerplateConfig) -> None:
    """Runs of title-like lines of one kind (menu items, or headlines) at least link_list_min_run long."""
    open_idx = _open_lines(rules, lines)
    first_prose = next((i for i in open_idx if not title_like[i]), None)
    run: list[int] = []
    kind = None
    for i in open_idx + [-1]:
        this = None
        if i >= 0 and title_like[i]:
            this = "nav" if _is_nav_item(_core(lines[i]), cfg) else "headline"
        if this is not None and this == kind:
            run.append(i)
            continue
        if len(run) >= cfg.link_list_min_run:
            # A headline run straight above the article's first paragraph ends with the article's own title
            # (sidebars come before the title, not between it and the text): keep that last line.
            spare_title = kind == "headline" and i >= 0 and i == first_prose
            for j in run[:-1] if spare_title else run:
                rules[j] = "link_list"
        run, kind = ([i], this) if this is not None else ([], None)
