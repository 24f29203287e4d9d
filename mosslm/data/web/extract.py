"""Turn a raw record into a `Document`: plain text as it is, HTML pages down to their main text (trafilatura).

The extracted text keeps the page's block structure, one line per paragraph, heading, list item or table row,
because the steps after this one (boilerplate, repeated lines, quality) judge text line by line: a "相关阅读" block
or a link list must stay a set of separate lines to be recognised and cut.

A page that cannot give any text is a `BadRecord` (it is broken input, reported with its file and record), not a
`Dropped` (which is a rule's judgement on readable text): "no <body>" when the HTML has no body at all,
"no main text" when trafilatura finds nothing worth keeping in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .document import BadRecord, Document, Dropped, RawRecord

_BLANK_RUNS = re.compile(r"\n{2,}")


@dataclass
class ExtractConfig:
    favor_precision: bool = False   # trafilatura: less text, fewer stray blocks
    favor_recall: bool = False      # trafilatura: when unsure, keep the block
    include_tables: bool = True     # table text (trafilatura writes each cell as a line of its own)
    include_comments: bool = False  # reader comments under an article are rarely training text
    fast: bool = False              # skip trafilatura's fallback extractors (faster, a little less recall)
    min_chars: int = 0              # drop ("extract.min_chars") an extracted text shorter than this


def extract(record: RawRecord, cfg: ExtractConfig) -> Document | Dropped | BadRecord:
    """The record's text as a Document: "text" records as they are, "html" records reduced to their main text."""
    if record.kind == "text":
        text = record.content
        signals: dict = {}
    elif record.kind == "html":
        result = _main_text(record, cfg)
        if isinstance(result, BadRecord):
            return result
        text = result
        signals = {"html_chars": len(record.content), "extracted_chars": len(text)}
    else:
        return BadRecord(record.source, record.id, f"unknown record kind {record.kind!r} (expected text or html)")
    doc = Document(id=record.id, text=text, source=record.source, url=record.url, signals=signals,
                   meta=dict(record.meta))
    if len(text) < cfg.min_chars:
        return Dropped("extract.min_chars", f"{len(text)} chars < min_chars {cfg.min_chars}", doc)
    return doc


def _main_text(record: RawRecord, cfg: ExtractConfig) -> str | BadRecord:
    import lxml.etree
    import lxml.html
    import trafilatura

    if not record.content.strip():
        return BadRecord(record.source, record.id, "empty HTML page")
    try:
        # Parsed here, not by trafilatura, to tell a page without a body from one without useful text.
        tree = lxml.html.document_fromstring(record.content.encode("utf-8"),
                                             parser=lxml.html.HTMLParser(encoding="utf-8"))
    except (lxml.etree.ParserError, ValueError) as e:
        return BadRecord(record.source, record.id, f"unparsable HTML: {e}")
    body = tree.find("body")
    if body is None or (len(body) == 0 and not (body.text or "").strip()):
        return BadRecord(record.source, record.id, "no <body>: the HTML page has no body content")
    text = trafilatura.extract(
        tree, url=record.url, output_format="txt", fast=cfg.fast, favor_precision=cfg.favor_precision,
        favor_recall=cfg.favor_recall, include_tables=cfg.include_tables, include_comments=cfg.include_comments,
        include_links=False, include_images=False, include_formatting=False, deduplicate=False,
        with_metadata=False)
    text = _BLANK_RUNS.sub("\n", (text or "").strip())
    if not text:
        return BadRecord(record.source, record.id, "no main text: trafilatura found no article text in the page")
    return text
