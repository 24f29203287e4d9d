"""A local knowledge base for the Search plugin: SQLite FTS5 with BM25 ranking.

Chinese needs no word segmenter here: each run of Han characters is indexed
as overlapping character bigrams (the common choice for CJK retrieval; the
trigram tokenizer cannot match the many two-character words, and jieba would
be one more dependency), Latin words as lower-cased words. Files are cut into
chunks of a few hundred characters at paragraph and sentence boundaries;
re-adding a changed file replaces its old chunks. A hit's snippet is
query-focused, as a web search engine's is: its sentences come in the order of
how much of the query they hold (IDF-weighted), so the sentence that answers
comes first.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import sqlite3
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..paths import home

CHUNK_CHARS = 300
SNIPPET_CHARS = 400
SUFFIXES = (".txt", ".md", ".html", ".htm", ".jsonl", ".pdf")

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


DEFAULT_KB = "default"
# The project's own bilingual handbook: the default knowledge base starts with it,
# and the speedrun's Search training data is built over it.
HANDBOOK = Path(__file__).resolve().parent.parent / "resources" / "kb" / "handbook.jsonl"


def kb_path(name: str | Path) -> Path:
    """A name's file under $MOSSLM_HOME/kb, or an explicit path to a .sqlite file."""
    if isinstance(name, Path) or str(name).endswith(".sqlite"):
        return Path(name)
    if not re.fullmatch(r"[\w.-]+", name):
        raise KBError(f"knowledge base names use letters, digits, '.', '-' and '_': {name!r}")
    return home() / "kb" / f"{name}.sqlite"


def build(path: Path, files: list[str]) -> None:
    """Create a knowledge base file from scratch, atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        add(tmp, files)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def connect(name: str | Path) -> sqlite3.Connection:
    path = kb_path(name)
    if name == DEFAULT_KB and not path.exists():
        build(path, [str(HANDBOOK)])
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


class _TextExtractor(HTMLParser):
    """The title and visible text of an HTML page (the text is used when trafilatura is not installed)."""

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


def _read_pdf(path: Path) -> tuple[str, str, str]:
    """One document per PDF; pages joined by blank lines so chunks break at page ends."""
    import logging

    import pypdf  # imported here: only PDF ingestion needs it

    # pypdf logs the damage it works around; readable files need no noise, unreadable ones raise below.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(path)
        # Many PDFs are encrypted with an empty user password (copy protection only).
        if reader.is_encrypted and not reader.decrypt(""):
            raise KBError(f"{path}: cannot read PDF: it is encrypted with a password")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = str((reader.metadata.title if reader.metadata else None) or "").strip()
    except KBError:
        raise
    except Exception as e:  # pypdf raises many error types on malformed files
        raise KBError(f"{path}: cannot read PDF: {str(e) or type(e).__name__} (is the file truncated or corrupt?)") from e
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise KBError(f"{path}: PDF has no text layer (a scan?); run OCR on it first, e.g. ocrmypdf")
    first = next(line.strip() for line in text.splitlines() if line.strip())
    return title or first[:80], path.resolve().as_uri(), text


def read_documents(path: Path) -> list[tuple[str, str, str]]:
    """(title, url, text) documents of one file."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return [_read_pdf(path)]
    raw = path.read_text(encoding="utf-8", errors="replace")
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
        parser = _TextExtractor()  # the page's <title> either way: it names the document in results
        parser.feed(raw)
        text, title = html.unescape("".join(parser.parts)), parser.title or path.stem
        try:
            import trafilatura  # well-kept main-text extraction, when installed
            text = trafilatura.extract(raw) or text
        except ImportError:
            pass
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


def add(name: str | Path, paths: list[str]) -> dict[str, int]:
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
    path = kb_path(name)
    existed = path.exists() or name == DEFAULT_KB  # the default KB is seeded by connect()
    db = connect(name)
    try:
        _index(db, files, counts)
    except BaseException:
        db.close()
        if not existed:  # a failed first add leaves no empty knowledge base behind
            path.unlink(missing_ok=True)
        raise
    db.close()
    return counts


def _index(db: sqlite3.Connection, files: list[Path], counts: dict[str, int]) -> None:
    """Add or replace the files' chunks in one transaction (all or nothing)."""
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


def search(name: str | Path, query: str, k: int = 3) -> list[Hit]:
    if name != DEFAULT_KB and not kb_path(name).exists():
        raise KBError(f"no knowledge base named {name!r}; create it with: moss kb add FILES... --kb {name}")
    match = fts_query(query)
    if match is None:
        return []
    db = connect(name)
    try:
        rows = db.execute("SELECT c.title, c.url, c.text, bm25(chunks_fts) AS score FROM chunks_fts "
                          "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? ORDER BY score, c.id LIMIT ?",
                          (match, k)).fetchall()
        weights = _term_weights(db, index_terms(query)) if rows else {}
    finally:
        db.close()
    return [Hit(title or "", url or "", focused_snippet(text, weights)[:SNIPPET_CHARS], score)
            for title, url, text, score in rows]


# A sentence ends at 。！？!? or at a full stop followed by a space or the end (not in 3.5 or e.g).
_SENTENCE_RE = re.compile(r"[^。！？!?]*?(?:[。！？!?]|\.(?=\s|$)|$)")


def sentences(text: str) -> list[str]:
    """The sentences of a text, stripped, without empty ones."""
    return [s.strip() for s in _SENTENCE_RE.findall(" ".join(text.split())) if s.strip()]


def _term_weights(db: sqlite3.Connection, terms: list[str]) -> dict[str, float]:
    """Each distinct query term's inverse document frequency over the knowledge base's chunks."""
    db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab USING fts5vocab(main, chunks_fts, row)")
    distinct = list(dict.fromkeys(terms))
    n = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    found = dict(db.execute(f"SELECT term, doc FROM temp.chunks_vocab WHERE term IN ({','.join('?' * len(distinct))})",
                            distinct).fetchall()) if distinct else {}
    return {t: math.log((n + 1) / (found.get(t, 0) + 0.5)) for t in distinct}


def focused_snippet(text: str, weights: dict[str, float]) -> str:
    """The passage with its sentences ordered by the weight of the query terms each holds (ties keep the
    passage's order), so a reader, or a model, finds the answering sentence first."""
    parts = sentences(text)
    if len(parts) < 2 or not weights:
        return text

    def held(sentence: str) -> float:
        # fsum: a set's order changes with the process's hash seed, and a plain sum's last bit with it
        return math.fsum(weights.get(t, 0.0) for t in set(index_terms(sentence)))
    ordered = sorted(parts, key=held, reverse=True)  # sorted() is stable: equal weights keep their order
    out = ordered[0]
    for part in ordered[1:]:
        out += ("" if out[-1] in "。！？" else " ") + part
    return out
