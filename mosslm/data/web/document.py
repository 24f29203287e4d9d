"""The one type the web-text pipeline passes between its steps.

Every per-document step is a plain function `step(doc, cfg) -> Document | Dropped`: it returns the document
(possibly trimmed, with what it measured in `doc.signals`) or says which named rule dropped it and why. The
pipeline (pipeline.py), the datatrove adapter (engines.py) and the tests call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union


@dataclass
class RawRecord:
    """One record as read from an input file, before any text is extracted: `kind` is "text" or "html"."""

    id: str                      # "<file name>:<record number>" or the WARC-Record-ID; stable across reruns
    source: str                  # the input file
    kind: str
    content: str
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields of a JSONL/parquet record, WARC headers


@dataclass
class Document:
    id: str
    text: str
    source: str
    url: str | None = None
    lang: str | None = None      # "zh", "en", ... after language ID
    lang_score: float | None = None
    signals: dict[str, Any] = field(default_factory=dict)      # what the steps measured, written with the output
    removed: list[tuple[str, str]] = field(default_factory=list)  # (rule, removed line or block) for --explain
    meta: dict[str, Any] = field(default_factory=dict)

    def trim(self, rule: str, removed: str) -> None:
        self.removed.append((rule, removed))


@dataclass
class Dropped:
    """A document a rule removed: `rule` is the rule's name as the stats and --explain show it (e.g.
    "quality.min_chars"), `detail` the measured value against its threshold."""

    rule: str
    detail: str
    doc: Document | None = None


@dataclass
class BadRecord:
    """An input record that could not be read (broken gzip, invalid UTF-8, a JSONL line that is not JSON, HTML
    without a body): reported with its file and record, and the run goes on with the rest."""

    source: str
    record: str                  # the record number, byte offset or WARC record id
    message: str

    def __str__(self) -> str:
        return f"{self.source}: record {self.record}: {self.message}"


Step = Callable[[Document, Any], Union[Document, Dropped]]
