"""Readers that several stages share: the plain texts of a data file or folder, and a text's language.

`moss tokenizer train`, `moss tokenizer eval`, `moss train pretrain` and `moss data tokenize` all read texts
through `read_texts`; the synthetic corpus, the quick eval and the tokenizer table use `language_of`.
Everything streams: a file of any size is read a block or a line at a time.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import IO, Iterator

from .conversations import read_file

CLEANED_SUFFIXES = (".jsonl", ".jsonl.gz")
_CHUNK = 1 << 20  # characters read at a time from a .txt file


def read_texts(path: str | Path, messages: bool = False) -> Iterator[str]:
    """Plain texts of a file or folder, streaming:
    - a folder of cleaned shards (`moss data clean --out DIR`: its *.jsonl / *.jsonl.gz, sorted, or those of
      its data/ subfolder): the "text" of every record;
    - .txt: blank-line separated blocks;
    - .jsonl/.json (optionally .gz) with `{"text": ...}` records;
    - conversation files: their rendered training text, or with `messages` each user message and reply."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"training data not found: {p}")
    if p.is_dir():
        for file in cleaned_shard_files(p):
            yield from _jsonl_texts(file)
        return
    if p.suffix.lower() == ".txt":
        yield from _txt_blocks(p)
        return
    first = _first_record(p)
    if isinstance(first, dict) and isinstance(first.get("text"), str):
        yield from _jsonl_texts(p)
        return
    for _, conv in read_file(p):
        if messages:
            for turn in conv.turns:
                yield from (t for t in (turn.human, turn.reply) if t)
        else:
            yield conv.render()


def cleaned_shard_files(folder: Path) -> list[Path]:
    """The JSONL shards of a cleaned-data folder: its own, else those of its data/ subfolder (the layout of
    `moss data clean --out`, whose explain/ samples of dropped text are never read as training text)."""
    for place in (folder, folder / "data"):
        files = sorted(f for f in place.glob("*") if f.name.endswith(CLEANED_SUFFIXES) and not f.is_dir())
        if files:
            return files
    raise ValueError(f"{folder}: no .jsonl or .jsonl.gz files in this folder (or in its data/ subfolder)")


def _open_text(p: Path) -> IO[str]:
    if p.name.lower().endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8")
    return open(p, encoding="utf-8")


def _jsonl_texts(p: Path) -> Iterator[str]:
    """The "text" of every record of a JSONL file; a record without one is an error naming file and line."""
    with _open_text(p) as f:
        number = 0
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{p}:{number}: expected a JSON object with a 'text' string ({e})") from None
                if not isinstance(text, str):
                    raise ValueError(f"{p}:{number}: expected a JSON object with a 'text' string "
                                     f"(got {type(text).__name__})")
                yield text
        except (OSError, EOFError, UnicodeDecodeError) as e:  # broken gzip, invalid UTF-8
            raise ValueError(f"{p}: unreadable after line {number}: {e}") from None


def _txt_blocks(p: Path) -> Iterator[str]:
    """Blank-line separated blocks, exactly as `text.split("\\n\\n")` of the whole file would cut them."""
    rest = ""
    with open(p, encoding="utf-8") as f:
        while True:
            try:
                chunk = f.read(_CHUNK)
            except UnicodeDecodeError as e:
                raise ValueError(f"{p}: not UTF-8 text: {e}") from None
            if not chunk:
                break
            *blocks, rest = (rest + chunk).split("\n\n")
            for block in blocks:
                if block.strip():
                    yield block.strip() + "\n"
    if rest.strip():
        yield rest.strip() + "\n"


def _first_record(p: Path):
    try:
        with _open_text(p) as f:
            for line in f:
                if line.strip():
                    try:
                        return json.loads(line)
                    except json.JSONDecodeError:
                        return None
    except (OSError, EOFError, UnicodeDecodeError):
        return None  # the conversation reader reports the file as it sees it
    return None


# ---------------------------------------------------------------- language

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_LATIN_RE = re.compile(r"[A-Za-z]")


def language_of(text: str) -> str:
    """"zh" when CJK characters (or full-width punctuation) are a meaningful share, else "en"."""
    cjk = len(_CJK_RE.findall(text))
    latin = len(_LATIN_RE.findall(text))
    return "zh" if cjk and cjk >= 0.25 * (cjk + latin) else "en"
