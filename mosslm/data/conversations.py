"""Read, validate and convert conversation files (.json / .jsonl).

Every format that `protocol` knows is auto-detected per record. Problems are
reported as `file:line: reason`; nothing is written unless all input is valid.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import protocol
from ..protocol import Conversation, ProtocolError


@dataclass
class Problem:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class FileReport:
    path: str
    conversations: int = 0
    turns: int = 0
    formats: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        fmts = ", ".join(f"{k}" for k in sorted(self.formats)) or "-"
        return (f"{self.path}: {self.conversations} conversations ({fmts}), {self.turns} turns, "
                f"{len(self.problems)} errors")


def iter_json_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line, record, error) for each record of a .jsonl or .json file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        yield 1, None, f"not UTF-8 text: {e}"
        return
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as e:
                yield number, None, f"invalid JSON: {e.msg} at column {e.colno}"
        return
    # .json: one object, or a list of objects (each reported at its own line).
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        try:
            yield 1 + text.count("\n", 0, start), json.loads(text), None
        except json.JSONDecodeError as e:
            yield e.lineno, None, f"invalid JSON: {e.msg} at column {e.colno}"
        return
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            yield 1 + text.count("\n", 0, pos), None, "invalid JSON: unterminated list"
            return
        if text[pos] == "]":
            return
        line = 1 + text.count("\n", 0, pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, None, f"invalid JSON: {e.msg} at column {e.colno}"
            return
        yield line, value, None


def read_file(path: str | os.PathLike, report: FileReport | None = None) -> Iterator[tuple[int, Conversation]]:
    """Parsed conversations of one file; problems go to `report` (or raise)."""
    p = Path(path)
    for line, record, error in iter_json_records(p):
        if error is None:
            try:
                fmt, conv = protocol.parse_record(record)
            except ProtocolError as e:
                error = str(e)
        if report is not None:
            report.conversations += 1
        if error is not None:
            if report is None:
                raise ProtocolError(f"{p}:{line}: {error}")
            report.problems.append(Problem(str(p), line, error))
            continue
        if report is not None:
            report.formats[fmt] += 1
            report.turns += len(conv.turns)
        yield line, conv


def check_files(paths: list[str]) -> list[FileReport]:
    reports = []
    for path in paths:
        report = FileReport(str(path))
        p = Path(path)
        if not p.is_file():
            report.problems.append(Problem(str(path), 0, "no such file"))
        elif p.suffix.lower() not in (".json", ".jsonl"):
            report.problems.append(Problem(str(path), 0, "expected a .json or .jsonl file"))
        else:
            for _ in read_file(p, report):
                pass
        reports.append(report)
    return reports


def convert_files(paths: list[str], to: str, out: str | os.PathLike) -> tuple[int, list[Problem]]:
    """Convert all inputs to one JSONL file; writes nothing if any record is bad."""
    if to not in ("moss", "sharegpt", "openai", "text"):
        raise ValueError(f"unknown output format {to!r}; choose from moss, sharegpt, openai, text")
    reports = check_files(paths)
    problems = [pr for r in reports for pr in r.problems]
    if problems:
        return 0, problems
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for path in paths:
                for _, conv in read_file(path):
                    f.write(json.dumps(protocol.write_record(conv, to), ensure_ascii=False) + "\n")
                    count += 1
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count, []
