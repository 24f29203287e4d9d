"""Find conversation files and read their JSON records, streaming.

The released MOSS SFT data comes in two layouts: one conversation per `.json`
file (a folder of many files) and one per line in a `.jsonl` file of a
million lines. A `.jsonl` file is read line by line, so memory stays bounded
whatever its size; a `.json` file (one object, or a list) is read whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".json", ".jsonl")
BOM = "\ufeff"


@dataclass
class InputPath:
    """One path as given: a file, or a folder and the data files found in it."""

    path: str
    files: list[Path] = field(default_factory=list)
    error: str | None = None

    @property
    def is_dir(self) -> bool:
        return Path(self.path).is_dir()


def is_data_file(path: Path) -> bool:
    return path.suffix.lower() in DATA_SUFFIXES


def resolve_inputs(paths: list[str], exclude: str | os.PathLike | None = None) -> list[InputPath]:
    """Each path with its data files; folders are walked recursively, in sorted order.

    `exclude` (an output file) is never read from a folder, so a converted
    file written next to its inputs is not read back as input by a rerun.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in paths:
        p = Path(path)
        item = InputPath(str(path))
        if p.is_dir():
            item.files = sorted(f for f in p.rglob("*") if f.is_file() and is_data_file(f) and f.resolve() != skip)
            if not item.files:
                item.error = "no .json or .jsonl files in this folder"
        elif not p.is_file():
            item.error = "no such file or folder"
        elif not is_data_file(p):
            item.error = "expected a .json or .jsonl file (or a folder of them)"
        else:
            item.files = [p]
        found.append(item)
    return found


Record = tuple[int, Any, "str | None"]  # (line, record or None, error or None)


def iter_records(path: Path, progress: Callable[[int], None] | None = None) -> Iterator[Record]:
    """Yield (line, record, error) for each record of a .jsonl or .json file.

    `progress` is called with the number of bytes consumed as reading goes.
    """
    if path.suffix.lower() == ".jsonl":
        yield from _iter_jsonl(path, progress)
    else:
        yield from _iter_json(path, progress)


def _invalid(e: json.JSONDecodeError) -> str:
    return f"invalid JSON: {e.msg} at column {e.colno}"


def _iter_jsonl(path: Path, progress: Callable[[int], None] | None) -> Iterator[Record]:
    # Binary lines split at b"\n" only (never inside a JSON string); a CR before it is JSON whitespace.
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if progress is not None:
                progress(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, f"not UTF-8 text: byte {raw[e.start]:#04x} at column {e.start + 1}"
                continue
            if number == 1 and line.startswith(BOM):
                line = line[1:]
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as e:
                yield number, None, _invalid(e)


def _iter_json(path: Path, progress: Callable[[int], None] | None) -> Iterator[Record]:
    raw = path.read_bytes()
    if progress is not None:
        progress(len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        yield 1 + raw.count(b"\n", 0, e.start), None, f"not UTF-8 text: byte {raw[e.start]:#04x}"
        return
    if text.startswith(BOM):
        text = text[1:]
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        try:
            yield 1 + text.count("\n", 0, start), json.loads(text), None
        except json.JSONDecodeError as e:
            yield e.lineno, None, _invalid(e)
        return
    yield from _iter_json_list(text, start + 1)


def _iter_json_list(text: str, pos: int) -> Iterator[Record]:
    """The items of a JSON list that starts before `pos`, each reported at its own line."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0  # lines are counted incrementally: a long list stays linear
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line, counted = line + text.count("\n", counted, pos), pos
        if pos >= len(text):
            yield line, None, "invalid JSON: unterminated list"
            return
        if text[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, None, _invalid(e)
            return
        yield line, value, None
