"""A labelled corpus of generated news pages, to measure the web-text pipeline against known answers.

Everything is generated here from the word banks and templates in resources/clean/labelled_zh.json and
labelled_en.json (written for this project): article bodies in Chinese or English, wrapped in the furniture of
real news sites (menus, breadcrumbs, bylines, "相关阅读" blocks, "X 关闭" and share widgets, ads, copyright and
editor footers, and each site's own banner lines that recur on all its pages). Every line is labelled "body" or
"boilerplate". Some pages are near-duplicates of another (names changed, a sentence added or dropped: character
5-gram Jaccard >= NEAR_DUP_MIN_JACCARD = 0.85 on the body, clear of a dedup threshold of 0.8), some are bilingual
("mixed"), some carry PII inside body sentences, and a few are junk a quality filter must drop (spam, symbol
soup, too short, lorem ipsum, a JavaScript notice).

`generate(out, seed, docs)` writes out/pages.jsonl ({"id", "url", "text"}), out/pages/<id>.html (the same page as
HTML with <nav>, <article>, <aside>, <footer>) and out/labels.jsonl ({"id", "lang", "lines", "near_dup_of",
"pii", "topic", "junk"}). Same seed, same bytes.
"""

from __future__ import annotations

import copy
import html
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..pii import id_card_valid
from .boilerplate import RESOURCES

BODY, JUNK = "body", "boilerplate"
JUNK_KINDS = ("spam", "symbols", "short", "lorem", "javascript")
NEAR_DUP_MIN_JACCARD = 0.85
_SLOT = re.compile(r"\{(\w+)\}")
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@cache
def bank(lang: str) -> dict:
    return json.loads((RESOURCES / f"labelled_{lang}.json").read_text(encoding="utf-8"))


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the text with whitespace removed (the dedup stage's shingles for Chinese)."""
    flat = re.sub(r"\s+", "", text)
    return {flat[i:i + n] for i in range(max(1, len(flat) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = char_shingles(a, n), char_shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


@dataclass
class Block:
    """A run of lines of one role; paragraphs keep their sentences so near-duplicates can be edited."""

    role: str                       # title, para, subhead, list, banner, nav_bar, nav, crumb, sidebar, meta,
    lines: list[str]                # related, widget, ad, footer
    label: str = JUNK
    sentences: list[list[str]] = field(default_factory=list)  # for "para": the sentences of each line


@dataclass
class Page:
    lang: str                       # "zh", "en" or "mixed"
    site: dict
    topic: str | None
    blocks: list[Block]
    pii: list[tuple[str, str]] = field(default_factory=list)
    near_dup_of: Page | None = None
    junk: str | None = None
    id: str = ""

    def lines(self) -> list[tuple[str, str]]:
        return [(line, b.label) for b in self.blocks for line in b.lines if line.strip()]

    def body_text(self) -> str:
        return "\n".join(line for line, label in self.lines() if label == BODY)


class _Filler:
    """Fills "{slot}" templates from a language's word banks; PII slots are recorded as they are made."""

    def __init__(self, rng: random.Random, lang: str, site: dict, topic_slots: dict | None = None):
        self.rng, self.lang, self.site = rng, lang, site
        self.slots = {**bank(lang)["slots"], **(topic_slots or {})}
        self.pii: list[tuple[str, str]] = []
        self.home_city = rng.choice(self.slots["city"])  # an article is mostly about one city

    def pin_city(self) -> _Filler:
        self.slots = {**self.slots, "city": [self.home_city] * 4 + self.rng.sample(self.slots["city"], 4)}
        return self

    def __call__(self, template: str) -> str:
        text = _SLOT.sub(lambda m: self.value(m.group(1)), template)
        text = _SLOT.sub(lambda m: self.value(m.group(1)), text)  # slot values may hold slots ("{city}队")
        return text[:1].upper() + text[1:] if self.lang == "en" else text  # "{indicator} rose" starts a line

    def value(self, name: str) -> str:
        r = self.rng
        if name in self.slots:
            return r.choice(self.slots[name])
        base = {"city2": "city", "person2": "person"}.get(name)
        if base:
            return r.choice(bank(self.lang)["slots"][base])
        simple = {
            "num": lambda: str(r.randint(3, 960)), "small": lambda: str(r.randint(2, 9)),
            "big": lambda: str(r.randint(1200, 98000)), "pct": lambda: f"{r.randint(2, 60)}.{r.randint(0, 9)}%",
            "year": lambda: str(r.randint(2023, 2026)), "month": lambda: str(r.randint(1, 12)),
            "day": lambda: str(r.randint(1, 28)), "monthname": lambda: r.choice(_MONTHS),
            "monthshort": lambda: r.choice(_MONTHS)[:3], "life": lambda: f"{r.randint(78, 82)}.{r.randint(0, 9)}",
            "ordinal": lambda: r.choice(["third", "fourth", "fifth", "tenth"]),
            "hm": lambda: f"{r.randint(6, 23):02d}:{r.randint(0, 59):02d}", "sec": lambda: f"{r.randint(0, 59):02d}",
            "date": lambda: f"{r.randint(2024, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
            "mm": lambda: f"{r.randint(1, 12):02d}", "dd": lambda: f"{r.randint(1, 28):02d}",
            "n3": lambda: str(r.randint(100, 999)), "n4": lambda: str(r.randint(1000, 9999)),
            "CITY": lambda: r.choice(self.slots["city"]).upper(), "site": lambda: self.site["name"],
            "host": lambda: self.site["host"].removeprefix("www."),
            "section": lambda: r.choice(bank(self.lang)["junk"]["nav_items"]),
            "product": lambda: r.choice(bank(self.lang)["junk"]["products"]),
            "h": lambda: headline(r, self.lang, self.site),
        }
        if name in simple:
            return simple[name]()
        pii = {"email": ("EMAIL", _email), "mobile": ("PHONE", _mobile), "intl_phone": ("PHONE", _intl_phone),
               "idcard": ("ID_CARD", _id_card), "ip": ("IP", _ip)}
        if name in pii:
            kind, make = pii[name]
            value = make(r)
            self.pii.append((kind, value))
            return value
        raise KeyError(f"labelled_{self.lang}.json: unknown slot {{{name}}}")


def _email(r: random.Random) -> str:
    user = r.choice(["newsroom", "tips", "li.wei", "zhang.min", "reader", "j.carter", "volunteer", "wang_lei"])
    return f"{user}{r.randint(1, 99)}@" + r.choice(["example-mail.com", "qq.com", "163.com", "mail.example.org"])


def _mobile(r: random.Random) -> str:
    digits = "1" + r.choice("3456789") + "".join(r.choice("0123456789") for _ in range(9))
    form = r.randrange(3)
    if form == 1:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    return f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}" if form == 2 else digits


def _intl_phone(r: random.Random) -> str:
    d = lambda k: "".join(r.choice("0123456789") for _ in range(k))
    return r.choice([f"+44 20 7946 {d(4)}", f"+1 (415) 555-{d(4)}", f"+49 30 {d(7)}", f"+61 2 {d(4)} {d(4)}"])


def _id_card(r: random.Random) -> str:
    region = r.choice(["110105", "310104", "440305", "330106", "510107", "420106"])
    body = f"{region}{r.randint(1960, 2005)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}{r.randint(0, 999):03d}"
    number = body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS)) % 11]
    assert id_card_valid(number)
    return number


def _ip(r: random.Random) -> str:
    if r.random() < 0.2:
        return f"2001:db8:{r.randint(1, 0xffff):x}::{r.randint(1, 0xffff):x}"
    return f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def headline(r: random.Random, lang: str, site: dict) -> str:
    topic = r.choice(list(bank(lang)["topics"].values()))
    return _Filler(r, lang, site, topic["slots"])(r.choice(topic["titles"]))


def _join(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)


def _body(r: random.Random, lang: str, site: dict, topic: str) -> tuple[list[Block], list[tuple[str, str]]]:
    """Title and article blocks of one page."""
    b, t = bank(lang), bank(lang)["topics"][topic]
    fill = _Filler(r, lang, site, t["slots"]).pin_city()
    pool = t["sentences"] + b["generic"]
    r.shuffle(pool)
    blocks = [Block("title", [fill(r.choice(t["titles"]))], BODY)]
    wanted_pii = r.sample(sorted(b["pii"]), k=r.choice([0, 0, 1, 1, 2]))
    for p in range(r.randint(3, 7)):
        if p in (2, 4) and r.random() < 0.35:
            blocks.append(Block("subhead", [fill(r.choice(t["subheads"]))], BODY))
        sentences = [fill(pool.pop()) for _ in range(min(len(pool), r.randint(2, 4)))]
        if not sentences:
            break
        if p == 0 and (lead := fill(r.choice(b["leads"]))):
            sentences[0] = lead + ("" if lang == "zh" else " ") + sentences[0]
        if wanted_pii and r.random() < 0.5:
            sentences.insert(r.randint(1, len(sentences)), fill(r.choice(b["pii"][wanted_pii.pop()])))
        blocks.append(Block("para", [_join(sentences, lang)], BODY, [sentences]))
        if p == 1 and r.random() < 0.25:
            items = [fill(item) for item in r.sample(b["list_items"], 3)]
            blocks.append(Block("list", [fill(r.choice(b["list_intro"]))] + items, BODY))
    for kind in wanted_pii:  # the ones not placed yet go into the last paragraph
        para = next(x for x in reversed(blocks) if x.role == "para")
        para.sentences[0].append(fill(r.choice(b["pii"][kind])))
        para.lines = [_join(para.sentences[0], lang)]
    return blocks, fill.pii


def _furnish(r: random.Random, lang: str, site: dict, body: list[Block]) -> list[Block]:
    """Wrap an article in its site's page furniture."""
    j = bank(lang)["junk"]
    fill = _Filler(r, lang, site)
    top: list[Block] = [Block("banner", [site["banners"][0]])]
    items = r.sample(j["nav_items"], r.randint(5, 9))
    if r.random() < 0.5:
        sep = r.choice(j["nav_seps"])
        top.append(Block("nav_bar", [sep.join(items)]))
    else:
        top.append(Block("nav", items))
    if r.random() < 0.5:
        top.append(Block("crumb", [fill(r.choice(j["breadcrumbs"]))]))
    if r.random() < 0.15:
        top.append(Block("sidebar", [headline(r, lang, site) for _ in range(r.randint(3, 6))]))
    meta = [Block("meta", [fill(m)]) for m in r.sample(j["meta"], r.choice([0, 1, 1, 2]))]
    article = body[:1] + meta + body[1:]
    if r.random() < 0.3:  # an ad inside the article, with its close button
        ad = [Block("ad", [fill(r.choice(j["ads"]))])] + ([Block("widget", [j["widgets"][0]])] if lang == "zh" else [])
        at = r.randint(2, len(article) - 1)
        article[at:at] = ad
    tail: list[Block] = []
    if r.random() < 0.6:
        tail.append(Block("widget", [fill(w) for w in r.sample(j["widgets"], r.randint(1, 3))]))
    if r.random() < 0.75:
        heading = fill(r.choice(j["related_headings"]))
        heads = [fill(r.choice(j["related_formats"]).replace("{h}", headline(r, lang, site)))
                 for _ in range(r.randint(2, 8))]
        tail.append(Block("related", [heading] + heads))
    if r.random() < 0.3:
        tail.append(Block("sidebar", [headline(r, lang, site) for _ in range(r.randint(3, 7))]))
    if r.random() < 0.5:
        tail.append(Block("ad", [fill(a) for a in r.sample(j["ads"], r.randint(1, 2))]))
        if lang == "zh" and r.random() < 0.6:
            tail.append(Block("widget", [r.choice(j["widgets"][:4])]))
    r.shuffle(tail)
    footer = Block("footer", [fill(f) for f in r.sample(j["footers"], r.randint(1, 3))])
    banners = Block("banner", [b for b in site["banners"][1:] if r.random() < 0.7])
    return top + article + tail + [footer, banners]


def _page(r: random.Random, lang: str) -> Page:
    site = r.choice(bank(lang)["sites"])
    topic = r.choice(sorted(bank(lang)["topics"]))
    body, pii = _body(r, lang, site, topic)
    return Page(lang, site, topic, _furnish(r, lang, site, body), pii)


def _mixed(r: random.Random) -> Page:
    """A Chinese article quoting English paragraphs (a bilingual report): one document, both languages."""
    page = _page(r, "zh")
    en_topic = r.choice(sorted(bank("en")["topics"]))
    en_body, en_pii = _body(r, "en", r.choice(bank("en")["sites"]), en_topic)
    paras = [b for b in en_body if b.role == "para"][: r.randint(1, 3)]
    last = max(i for i, b in enumerate(page.blocks) if b.label == BODY)
    page.blocks[last + 1:last + 1] = paras
    page.lang, page.pii = "mixed", page.pii + [p for p in en_pii if any(p[1] in b.lines[0] for b in paras)]
    return page


def _near_duplicate(r: random.Random, original: Page) -> Page:
    """A copy with small edits (names changed, a sentence added or dropped), Jaccard >= NEAR_DUP_MIN_JACCARD on
    the body."""
    lang = "zh" if original.lang == "mixed" else original.lang
    for attempt in range(6):
        page = copy.deepcopy(original)
        page.near_dup_of = original
        if r.random() < 0.5:
            page.site = r.choice(bank(lang)["sites"])
        body = [b for b in page.blocks if b.label == BODY]
        paras = [b for b in body if b.role == "para" and b.sentences]
        edits = r.sample(["names", "add", "drop"], k=2) if attempt < 5 else ["add"]
        if "names" in edits:
            names = bank(lang)["slots"]["city"] + bank(lang)["slots"]["person"]
            present = [n for n in names if n in page.body_text()][:2]
            for old in present:
                new = r.choice([n for n in names if n != old and n not in page.body_text()])
                for b in body:
                    b.lines = [line.replace(old, new) for line in b.lines]
                    b.sentences = [[s.replace(old, new) for s in ss] for ss in b.sentences]
        target = r.choice(paras)
        if "names" in edits and page.body_text() == original.body_text():
            edits.append("add")  # no name to change: the copy still needs an edit
        if "add" in edits:
            fill = _Filler(r, lang, page.site)
            fresh = [t for t in bank(lang)["generic"]  # a new sentence, not a second copy of one
                     if max(_SLOT.split(t), key=len) not in page.body_text()]
            extra = fill(r.choice(fresh))
            target.sentences[0].insert(r.randint(0, len(target.sentences[0])), extra)
        if "drop" in edits and len(target.sentences[0]) > 2:
            target.sentences[0].pop(r.randrange(len(target.sentences[0])))
        target.lines = [_join(target.sentences[0], lang)]
        similarity = jaccard(page.body_text(), original.body_text())
        if page.body_text() != original.body_text() and similarity >= NEAR_DUP_MIN_JACCARD:
            break
    page.blocks = _furnish(r, lang, page.site, [b for b in page.blocks if b.label == BODY])
    page.pii = [p for p in original.pii if p[1] in page.body_text()]
    return page


def _junk(r: random.Random, kind: str, lang: str) -> Page:
    """A page a quality filter must drop; all of its lines are labelled boilerplate."""
    b = bank(lang)
    site = r.choice(b["sites"])
    fill = _Filler(r, lang, site)
    sep = "！" if lang == "zh" else "! "
    if kind == "spam":
        lines = [sep.join(r.sample(b["spam"], 6)) + sep + fill("{product}") for _ in range(r.randint(6, 10))]
    elif kind == "symbols":
        marks = "★☆▶◀■□◆◇※☎☞♥♦♣→←↑↓"
        lines = [" ".join("".join(r.choice(marks) for _ in range(r.randint(3, 8))) + " " + fill("{section}")
                          for _ in range(10)) for _ in range(r.randint(8, 12))]
    elif kind == "short":
        lines = [r.choice(b["short"])]
    elif kind == "lorem":
        words = ["dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "tempor", "magna",
                 "aliqua", "veniam", "nostrud", "ullamco", "laboris", "commodo"]
        lines = ["Lorem ipsum " + " ".join(r.choice(words) for _ in range(40)) + "." for _ in range(3)]
        lang = "en"
    elif lang == "zh":
        lines = ["您的浏览器不支持JavaScript，请启用JavaScript后刷新本页面。", "为获得更好的浏览体验，请升级浏览器。"]
    else:
        lines = ["Please enable JavaScript in your browser to view this page.",
                 "Your browser does not support the features this site needs."]
    return Page(lang, site, None, [Block("junk", lines)], junk=kind)


def _render_html(page: Page) -> str:
    """The page as HTML: furniture in <header>/<nav>/<aside>/<footer>, the article in <article>."""
    e = html.escape
    body_idx = [i for i, b in enumerate(page.blocks) if b.label == BODY]
    first, last = (body_idx[0], body_idx[-1]) if body_idx else (len(page.blocks), -1)
    out = [(f'<!DOCTYPE html>\n<html lang="{"en" if page.lang == "en" else "zh-CN"}"><head><meta charset="utf-8">'
            f"<title>{e(page.blocks[first].lines[0] if body_idx else page.site['name'])}</title></head><body>")]
    link = lambda text: f'<a href="/news/{zlib.crc32(text.encode()) % 100000}.html">{e(text)}</a>'
    for i, b in enumerate(page.blocks):
        if i == first:
            out.append("<main><article>")
        tags = {"title": "<h1>{}</h1>", "subhead": "<h2>{}</h2>", "para": "<p>{}</p>", "meta":
                '<div class="meta">{}</div>', "crumb": '<div class="breadcrumb">{}</div>',
                "banner": '<div class="site-banner">{}</div>', "widget": '<div class="share-tools">{}</div>',
                "ad": '<div class="ad"><p>{}</p></div>', "junk": "<p>{}</p>"}
        if b.role in tags:
            out += [tags[b.role].format(e(line)) for line in b.lines]
        elif b.role == "list":
            out.append(f"<p>{e(b.lines[0])}</p><ul>" + "".join(f"<li>{e(x)}</li>" for x in b.lines[1:]) + "</ul>")
        elif b.role in ("nav", "nav_bar"):
            items = b.lines if b.role == "nav" else [x for x in re.split(r"\s*[|｜·]\s*|\s+", b.lines[0]) if x]
            out.append("<nav><ul>" + "".join(f"<li>{link(x)}</li>" for x in items) + "</ul></nav>")
        elif b.role in ("related", "sidebar"):
            head, items = (f"<h3>{e(b.lines[0])}</h3>", b.lines[1:]) if b.role == "related" else ("", b.lines)
            out.append(f'<aside class="{b.role}">{head}<ul>' + "".join(f"<li>{link(x)}</li>" for x in items)
                       + "</ul></aside>")
        elif b.role == "footer":
            out.append("<footer>" + "".join(f"<p>{e(x)}</p>" for x in b.lines) + "</footer>")
        if i == last:
            out.append("</article></main>")
    return "\n".join(out + ["</body></html>\n"])


def build(seed: int = 0, docs: int = 200) -> list[Page]:
    """The corpus's pages, in their final order, with ids."""
    r = random.Random(seed)
    n_junk = max(len(JUNK_KINDS), docs // 25) if docs >= 20 else 0
    n_dup, n_mixed = docs // 10, docs // 12
    originals = [_page(r, "zh" if i % 2 == 0 else "en") for i in range(max(1, docs - n_junk - n_dup - n_mixed))]
    pages = originals + [_mixed(r) for _ in range(n_mixed)]
    pages += [_near_duplicate(r, o) for o in r.sample(pages, min(n_dup, len(pages)))]
    pages += [_junk(r, JUNK_KINDS[i % len(JUNK_KINDS)], "zh" if i % 2 == 0 else "en") for i in range(n_junk)]
    r.shuffle(pages)
    for i, page in enumerate(pages[:docs]):
        page.id = f"page-{i:04d}"
    return pages[:docs]


def generate(out: Path, seed: int = 0, docs: int = 200) -> Path:
    """Write pages.jsonl, pages/<id>.html and labels.jsonl under `out`; return `out`."""
    out = Path(out)
    (out / "pages").mkdir(parents=True, exist_ok=True)
    with open(out / "pages.jsonl", "w", encoding="utf-8") as pages_f, \
            open(out / "labels.jsonl", "w", encoding="utf-8") as labels_f:
        for page in build(seed, docs):
            lines = page.lines()
            url = f"https://{page.site['host']}/{page.topic or 'misc'}/{page.id}.html"
            pages_f.write(json.dumps({"id": page.id, "url": url, "text": "\n".join(t for t, _ in lines)},
                                     ensure_ascii=False) + "\n")
            dup = page.near_dup_of.id if page.near_dup_of and page.near_dup_of.id else None
            labels_f.write(json.dumps({"id": page.id, "lang": page.lang, "lines": [list(x) for x in lines],
                                       "near_dup_of": dup, "pii": [list(p) for p in page.pii],
                                       "topic": page.topic, "junk": page.junk}, ensure_ascii=False) + "\n")
            (out / "pages" / f"{page.id}.html").write_text(_render_html(page), encoding="utf-8")
    return out
