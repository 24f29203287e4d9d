"""Read raw input files into a stream of `RawRecord`s, one record at a time.

Formats, chosen by the file name's suffix:

- `.txt`, `.md`: one document per file, kind "text";
- `.html`, `.htm`: one page per file, kind "html" (charset from `<meta charset>`, else UTF-8, else detected);
- `.jsonl`, `.jsonl.gz`: one record per line; the `text_field` string is the content (kind "text"), or the
  `html_field` string (kind "html") when one is given; a `url` field becomes the url, other fields go to meta;
- `.parquet`: the same fields, read batch by batch within row groups with pyarrow;
- `.warc`, `.warc.gz`: HTML response records with a 2xx status (warcio); url from WARC-Target-URI, id the WARC-Record-ID, charset
  from the HTTP headers, else detected.

Why a stream of `RawRecord | BadRecord` rather than exceptions: a crawl always holds some broken records (a cut-off
gzip, a line that is not JSON, bytes that are not UTF-8). Each becomes a `BadRecord` naming the file and the record,
and reading goes on, so one bad record never costs the rest of the run. Memory stays bounded: line by line, batch
by batch, record by record; only a .txt/.md/.html file, which is one document, is read whole (up to
`max_document_bytes`).
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .document import BadRecord, RawRecord

# Longest first, so "x.jsonl.gz" is matched as ".jsonl.gz", not ".gz".
SUFFIXES = (".jsonl.gz", ".warc.gz", ".jsonl", ".parquet", ".warc", ".html", ".htm", ".txt", ".md")
MAX_DOCUMENT_BYTES = 64 * 2**20   # a single .txt/.html document larger than this is a dump, not a page
PARQUET_BATCH_ROWS = 1024         # rows held in memory at once when reading parquet
_DECODE_ERRORS = (OSError, EOFError, zlib.error)  # what a truncated or corrupt gzip stream raises

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
# GB2312 and GBK pages routinely use characters only their superset GB18030 defines.
# Names as `codecs.lookup(...).name` spells them. Pages labelled ASCII or Latin-1 are mostly UTF-8 or cp1252.
_CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "ascii": "utf-8", "iso8859-1": "cp1252"}


class IngestError(ValueError):
    """An input path that cannot be read at all (missing, or of an unknown kind): the run cannot start."""


def suffix_of(path: Path) -> str | None:
    """The known suffix `path` ends with (".jsonl.gz", ".html", ...), or None."""
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def input_files(paths: list[str]) -> list[Path]:
    """The input files named by `paths`: files as given, folders searched recursively (sorted, known suffixes only,
    hidden files and folders skipped). A missing path, or a file given directly with an unknown suffix, is an
    `IngestError`."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(f for f in path.rglob("*") if f.is_file() and suffix_of(f)
                                and not any(part.startswith(".") for part in f.relative_to(path).parts)))
        elif path.is_file():
            if suffix_of(path) is None:
                raise IngestError(f"{path}: unknown input format; known suffixes: {', '.join(SUFFIXES)}")
            found.append(path)
        else:
            raise IngestError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:  # the same file named twice (a folder and a file in it) is read once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def read_records(path: Path, text_field: str = "text", html_field: str | None = None,
                 max_document_bytes: int = MAX_DOCUMENT_BYTES) -> Iterator[RawRecord | BadRecord]:
    """Stream the records of one input file; unreadable records come out as `BadRecord` and reading goes on."""
    path = Path(path)
    suffix = suffix_of(path)
    try:
        if suffix in (".txt", ".md"):
            yield from _read_text_file(path, max_document_bytes)
        elif suffix in (".html", ".htm"):
            yield from _read_html_file(path, max_document_bytes)
        elif suffix in (".jsonl", ".jsonl.gz"):
            yield from _read_jsonl(path, text_field, html_field)
        elif suffix == ".parquet":
            yield from _read_parquet(path, text_field, html_field)
        elif suffix in (".warc", ".warc.gz"):
            yield from _read_warc(path)
        else:
            yield BadRecord(str(path), "-", f"unknown input format; known suffixes: {', '.join(SUFFIXES)}")
    except OSError as e:  # the file vanished or cannot be opened: report it, the other files go on
        yield BadRecord(str(path), "-", f"cannot read the file: {e.strerror or e}")


def _utf8_error(data: bytes, e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {e.start}: {data[e.start:e.start + 4]!r}"


def _read_text_file(path: Path, limit: int) -> Iterator[RawRecord | BadRecord]:
    size = path.stat().st_size
    if size > limit:
        yield BadRecord(str(path), "1", f"file of {size} bytes is over the {limit}-byte limit for one document")
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        yield BadRecord(str(path), "1", _utf8_error(data, e))
        return
    yield RawRecord(id=f"{path.name}:1", source=str(path), kind="text", content=text)


def _read_html_file(path: Path, limit: int) -> Iterator[RawRecord | BadRecord]:
    size = path.stat().st_size
    if size > limit:
        yield BadRecord(str(path), "1", f"file of {size} bytes is over the {limit}-byte limit for one page")
        return
    html = decode_html(path.read_bytes())
    if html is None:
        yield BadRecord(str(path), "1", "cannot decode the page: no charset declared and none detected")
        return
    yield RawRecord(id=f"{path.name}:1", source=str(path), kind="html", content=html)


def _open_lines(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _json_safe(value: Any) -> Any:
    """Meta travels with the output JSONL: keep JSON values, write anything else (dates, bytes) as text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


def _record_from_fields(fields: dict[str, Any], path: Path, number: int, text_field: str,
                        html_field: str | None) -> RawRecord | BadRecord:
    """One JSONL line or parquet row as a record: html_field (when given and present) else text_field."""
    if html_field is not None and isinstance(fields.get(html_field), str):
        kind, used = "html", html_field
    elif isinstance(fields.get(text_field), str):
        kind, used = "text", text_field
    else:
        wanted = f"{html_field!r} or {text_field!r}" if html_field is not None else repr(text_field)
        key = html_field if html_field in fields else text_field
        why = ("missing" if key not in fields else "null" if fields[key] is None
               else f"not a string but {type(fields[key]).__name__}")
        return BadRecord(str(path), str(number), f"no text: field {wanted} is {why}")
    url = fields.get("url")
    meta = {k: _json_safe(v) for k, v in fields.items() if k not in (used, text_field, html_field, "url")}
    return RawRecord(id=f"{path.name}:{number}", source=str(path), kind=kind, content=fields[used],
                     url=url if isinstance(url, str) else None, meta=meta)


def _read_jsonl(path: Path, text_field: str, html_field: str | None) -> Iterator[RawRecord | BadRecord]:
    number = 0
    with _open_lines(path) as stream:
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except _DECODE_ERRORS as e:
                # Records before the break were already yielded and stay; the rest of the file is lost.
                yield BadRecord(str(path), f"{number + 1}-end",
                                f"broken gzip after record {number}: {e}; the rest of the file is skipped")
                return
            number += 1
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield BadRecord(str(path), str(number), _utf8_error(line, e))
                continue
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRecord(str(path), str(number), f"not JSON: {e.msg} at column {e.colno}: {text[:60]!r}")
                continue
            if not isinstance(fields, dict):
                yield BadRecord(str(path), str(number), f"not a JSON object but {type(fields).__name__}")
                continue
            yield _record_from_fields(fields, path, number, text_field, html_field)


def _read_parquet(path: Path, text_field: str, html_field: str | None) -> Iterator[RawRecord | BadRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield BadRecord(str(path), "-", f"not a readable parquet file: {e}")
        return
    names = set(table.schema_arrow.names)
    if text_field not in names and (html_field is None or html_field not in names):
        wanted = f"{html_field!r} or {text_field!r}" if html_field else repr(text_field)
        yield BadRecord(str(path), "-", f"no column {wanted}; columns: {', '.join(sorted(names))}")
        return
    number = 0
    try:
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield _record_from_fields(row, path, number, text_field, html_field)
    except (pa.ArrowException, OSError) as e:
        yield BadRecord(str(path), f"{number + 1}-end", f"broken parquet after row {number}: {e}")


def _canonical_charset(name: str | None) -> str | None:
    if not name:
        return None
    name = name.strip().lower()
    try:
        name = codecs.lookup(name.removeprefix("x-")).name  # "x-gbk", "x-sjis": vendor spellings
    except LookupError:
        return None
    return _CHARSET_SUPERSETS.get(name, name)


def decode_html(payload: bytes, declared: str | None = None) -> str | None:
    """Decode a page: the declared charset (HTTP header), then `<meta charset>`, then UTF-8, then detection.
    None when nothing decodes it."""
    match = _META_CHARSET.search(payload[:4096])
    candidates = [_canonical_charset(declared), _canonical_charset(match.group(1).decode() if match else None),
                  "utf-8"]
    for charset in dict.fromkeys(c for c in candidates if c):
        try:
            return payload.decode(charset).removeprefix("\ufeff")
        except UnicodeDecodeError:
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(payload[:1_000_000]).best()
    if best is None or best.encoding is None:
        return None
    return payload.decode(best.encoding, errors="replace")


def _complete(record: Any) -> bool:
    """Whether the whole record was read: warcio ends a truncated record silently, with bytes still owed."""
    return getattr(record.raw_stream, "limit", 0) == 0


def _drain(stream: Any) -> None:
    while stream.read(1 << 16):
        pass


def _read_warc(path: Path) -> Iterator[RawRecord | BadRecord]:
    from warcio.archiveiterator import ArchiveIterator

    count = 0
    last = "the start of the file"
    size = path.stat().st_size
    with open(path, "rb") as stream:
        archive = ArchiveIterator(stream)
        records = iter(archive)
        while True:
            try:
                try:
                    record = next(records)
                except StopIteration:
                    # warcio also stops quietly at a record whose headers are cut off: it then ends short of the file.
                    if archive.offset < size:
                        raise EOFError(f"the file ends inside a record's headers at byte {archive.offset}") from None
                    raise
                content_type = status = ""
                if record.rec_type == "response" and record.http_headers is not None:
                    content_type = record.http_headers.get_header("Content-Type") or ""
                    status = record.http_headers.get_statuscode() or ""
                # Only pages: redirects and error pages carry no content worth training on.
                if "html" not in content_type.lower() or not status.startswith("2"):
                    _drain(record.raw_stream)  # read, not skipped, to notice a record cut short
                    payload = None
                else:
                    payload = record.content_stream().read()
                if not _complete(record):
                    raise EOFError("the file ends inside a record")
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 -- warcio raises assorted errors on corrupt input
                yield BadRecord(str(path), f"after {last}", f"broken WARC after {count} pages: "
                                f"{type(e).__name__}: {e}; the rest of the file is skipped")
                return
            if payload is None:
                continue
            count += 1
            record_id = (record.rec_headers.get_header("WARC-Record-ID") or "").strip("<>") or f"{path.name}:{count}"
            last = record_id
            header = _HEADER_CHARSET.search(content_type)
            html = decode_html(payload, header.group(1) if header else None)
            if html is None:
                yield BadRecord(str(path), record_id, "cannot decode the page: charset unknown")
                continue
            meta = {"warc_date": record.rec_headers.get_header("WARC-Date"),
                    "http_status": status, "content_type": content_type}
            yield RawRecord(id=record_id, source=str(path), kind="html", content=html,
                            url=record.rec_headers.get_header("WARC-Target-URI"), meta=meta)
