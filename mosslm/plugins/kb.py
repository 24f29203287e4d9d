"""A local knowledge base for the Search plugin: SQLite FTS5 with BM25 ranking.

Chinese needs no word segmenter here: each run of Han characters is indexed
as overlapping character bigrams (the common choice for CJK retrieval; the
trigram tokenizer cannot match the many two-character words, and jieba would
be one more dependency), Latin words as lower-cased words. Files are cut into
chunks of a few hundred characters at paragraph and sentence boundaries;
re-adding a changed file replaces its old chunks.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sqlite3
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..paths import home

CHUNK_CHARS = 300
SNIPPET_CHARS = 400
SUFFIXES = (".txt", ".md", ".html", ".htm", ".jsonl")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, title TEXT, url TEXT, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(terms, tokenize='unicode61');
"""


class KBError(ValueError):
    pass


@dataclass
class Hit:
    title: str
    url: str
    text: str
    score: float


def kb_path(name: str) -> Path:
    if not re.fullmatch(r"[\w.-]+", name):
        raise KBError(f"knowledge base names use letters, digits, '.', '-' and '_': {name!r}")
    return home() / "kb" / f"{name}.sqlite"


def connect(name: str) -> sqlite3.Connection:
    path = kb_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page (used when trafilatura is not installed)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav", "footer", "header"):
            self._skip += 1
        self._in_title = tag == "title"
        if tag in ("p", "div", "br", "li", "h1", "h2", "h3", "tr"):
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav", "footer", "header") and self._skip:
            self._skip -= 1
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.parts.append(data)


def read_documents(path: Path) -> list[tuple[str, str, str]]:
    """(title, url, text) documents of one file."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                docs.append((str(record.get("title", path.stem)), str(record.get("url", "")), str(record["text"])))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise KBError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
        return docs
    if suffix in (".html", ".htm"):
        try:
            import trafilatura  # well-kept main-text extraction, when installed
            text = trafilatura.extract(raw) or ""
            title = path.stem
        except ImportError:
            parser = _TextExtractor()
            parser.feed(raw)
            text, title = html.unescape("".join(parser.parts)), parser.title or path.stem
        return [(title, path.resolve().as_uri(), text)]
    first = raw.lstrip().splitlines()[0] if raw.strip() else path.stem
    return [(first.lstrip("# ").strip()[:80] or path.stem, path.resolve().as_uri(), raw)]


def chunk(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs joined up to `size` characters; long ones split after sentence ends."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        while len(para) > size:
            cut = max(para.rfind(m, 0, size) for m in ("。", "！", "？", ". ", "! ", "? ", "；", "; "))
            cut = cut + 1 if cut > size // 3 else size
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + len(piece) + 1 <= size:
            chunks[-1] += "\n" + piece
        else:
            chunks.append(piece)
    return chunks


def add(name: str, paths: list[str]) -> dict[str, int]:
    """Index files (folders are walked); returns counts of added, replaced, unchanged files and chunks."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise KBError(f"{p}: unsupported file type; use {', '.join(SUFFIXES)}")
            files.append(p)
        else:
            raise KBError(f"no such file or folder: {p}")
    counts = {"added": 0, "replaced": 0, "unchanged": 0, "chunks": 0}
    db = connect(name)
    with db:
        for f in files:
            key = str(f.resolve())
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            old = db.execute("SELECT sha256 FROM files WHERE path = ?", (key,)).fetchone()
            if old and old[0] == digest:
                counts["unchanged"] += 1
                continue
            if old:
                db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE path = ?)", (key,))
                db.execute("DELETE FROM chunks WHERE path = ?", (key,))
            for title, url, text in read_documents(f):
                for piece in chunk(text):
                    cur = db.execute("INSERT INTO chunks(path, title, url, text) VALUES (?, ?, ?, ?)", (key, title, url, piece))
                    db.execute("INSERT INTO chunks_fts(rowid, terms) VALUES (?, ?)",
                               (cur.lastrowid, " ".join(index_terms(title + "\n" + piece))))
                    counts["chunks"] += 1
            db.execute("INSERT OR REPLACE INTO files(path, sha256) VALUES (?, ?)", (key, digest))
            counts["replaced" if old else "added"] += 1
    db.close()
    return counts


_TERM_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[^\W_]+")
_HAN_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def index_terms(text: str) -> list[str]:
    """Han runs as overlapping bigrams (a lone character as itself), other words lower-cased."""
    terms: list[str] = []
    for run in _TERM_RE.findall(text):
        if _HAN_RE.match(run):
            terms += [run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)]
        else:
            terms.append(run.lower())
    return terms


def fts_query(query: str) -> str | None:
    """The query's terms, quoted and OR-ed; BM25 then favours chunks that share the rare ones."""
    terms = list(dict.fromkeys(index_terms(query)))[:64]
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms) or None


def search(name: str, query: str, k: int = 3) -> list[Hit]:
    if not kb_path(name).exists():
        raise KBError(f"no knowledge base named {name!r}; create it with: moss kb add FILES... --kb {name}")
    match = fts_query(query)
    if match is None:
        return []
    db = connect(name)
    try:
        rows = db.execute("SELECT c.title, c.url, c.text, bm25(chunks_fts) AS score FROM chunks_fts "
                          "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? ORDER BY score LIMIT ?",
                          (match, k)).fetchall()
    finally:
        db.close()
    return [Hit(title or "", url or "", text[:SNIPPET_CHARS], score) for title, url, text, score in rows]
