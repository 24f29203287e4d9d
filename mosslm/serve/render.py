"""Replies as safe HTML for the web chat: Markdown (markdown-it-py), then sanitised (nh3).

The model's text is untrusted: markdown-it runs with raw HTML off, so `<script>`
in a reply is text, and nh3 then keeps only an allow-list of tags and attributes
(links: http(s) and mailto only). Citations `<sup><|n|></sup>` become small links
to the n-th source of the turn's Search results.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

_CITATION = re.compile(r"<sup><\|(\d{1,3})\|></sup>")
_MARK = "\u2063cite{}\u2063"  # an invisible separator pair markdown leaves alone
_MARK_RE = re.compile("\u2063cite(\\d{1,3})\u2063")

TAGS = {"p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "h1", "h2",
        "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "a", "sup", "span"}
ATTRIBUTES = {"a": {"href", "title", "target"}, "code": {"class"}, "sup": {"class"}, "th": {"style"},
              "td": {"style"}, "ol": {"start"}, "span": {"class"}}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    # commonmark + tables + strikethrough; html=False: raw HTML in the text is shown as text.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True}).enable(["table", "strikethrough"])


def reply_html(text: str, sources: list[tuple[str, str]] | None = None) -> str:
    """The reply as sanitised HTML, its citations linked to `sources` (1-based)."""
    marked = _CITATION.sub(lambda m: _MARK.format(m.group(1)), text or "")
    rendered = _markdown().render(marked)

    def cite(m: re.Match) -> str:
        n = int(m.group(1))
        url = sources[n - 1][1] if sources and 1 <= n <= len(sources) else ""
        title = sources[n - 1][0] if sources and 1 <= n <= len(sources) else ""
        if url.startswith(("http://", "https://")):
            return (f'<sup class="cite"><a href="{html.escape(url, quote=True)}" title="{html.escape(title, quote=True)}"'
                    f' target="_blank">[{n}]</a></sup>')
        return f'<sup class="cite"><span class="cite-ref" title="{html.escape(title, quote=True)}">[{n}]</span></sup>'

    rendered = _MARK_RE.sub(cite, rendered)
    return nh3.clean(rendered, tags=TAGS, attributes=ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer nofollow")


class StreamRenderer:
    """reply_html for a reply that grows: finished blocks (up to a blank line outside a code
    fence) are rendered once and kept; only the unfinished tail is rendered again per delta.
    A whole-reply render (reply_html) at the end settles anything a split block changes."""

    def __init__(self) -> None:
        self._done_upto, self._done_html = 0, ""

    def render(self, text: str, sources: list[tuple[str, str]] | None = None) -> str:
        split = _stable_split(text, self._done_upto)
        if split > self._done_upto:
            self._done_html += reply_html(text[self._done_upto:split], sources)
            self._done_upto = split
        return self._done_html + reply_html(text[self._done_upto:], sources)


def _stable_split(text: str, start: int) -> int:
    """The end of the last blank line after `start` that is not inside a ``` fence."""
    best, pos = start, start
    fenced = False
    for line_end in _line_ends(text, start):
        line = text[pos:line_end]
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and not line.strip() and line_end < len(text):
            best = line_end + 1
        pos = line_end + 1
    return best


def _line_ends(text: str, start: int):
    i = text.find("\n", start)
    while i != -1:
        yield i
        i = text.find("\n", i + 1)
