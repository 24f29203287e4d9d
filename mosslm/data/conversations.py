"""Validate and convert conversation files (.json / .jsonl, or folders of them).

Every format that `protocol` knows is auto-detected per record. Problems are
reported as `file:line: reason` (errors) and `file:line: warning: reason`
(quirks kept verbatim). Reading streams (see `reader`), so a file of a million
conversations is checked or converted in bounded memory.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import protocol
from ..protocol import Conversation, ProtocolError
from ..paths import atomic_file
from .preferences import is_preference, read_preference
from .reader import InputPath, iter_records, resolve_inputs

# Per input path: enough to see what is wrong, bounded however broken the input is.
MAX_STORED_PROBLEMS = 1000
FORMATS_OUT = ("moss", "sharegpt", "openai", "text")


@dataclass
class Problem:
    path: str
    line: int
    reason: str
    severity: str = "error"  # or "warning": kept verbatim, never blocks

    def __str__(self) -> str:
        tag = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}: {tag}{self.reason}"


@dataclass
class FileReport:
    """What reading one input path (a file, or a folder of files) found."""

    path: str
    is_dir: bool = False
    files: int = 0
    bytes: int = 0
    conversations: int = 0
    turns: int = 0
    formats: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)  # the first MAX_STORED_PROBLEMS, in reading order
    errors: int = 0
    warnings: int = 0

    def add(self, problem: Problem) -> None:
        if problem.severity == "warning":
            self.warnings += 1
        else:
            self.errors += 1
        if len(self.problems) < MAX_STORED_PROBLEMS:
            self.problems.append(problem)

    def not_shown(self, severity: str | None = None) -> int:
        stored = sum(1 for p in self.problems if severity in (None, p.severity))
        total = {"error": self.errors, "warning": self.warnings}.get(severity, self.errors + self.warnings)
        return total - stored

    def lines(self, severity: str | None = None) -> Iterator[str]:
        """The stored problems (of one severity, or all), then how many were not kept."""
        yield from (str(p) for p in self.problems if severity in (None, p.severity))
        hidden = self.not_shown(severity)
        if hidden:
            yield f"{self.path}: {hidden:,} more not shown (at most {MAX_STORED_PROBLEMS} are kept per input)"

    def summary(self) -> str:
        fmts = ", ".join(sorted(self.formats)) or "-"
        files = f"{self.files} files, " if self.is_dir else ""
        return (f"{self.path}: {files}{self.conversations} conversations ({fmts}), {self.turns} turns, "
                f"{self.errors} errors, {self.warnings} warnings")


def problem_lines(reports: list[FileReport], severity: str | None = None) -> Iterator[str]:
    for report in reports:
        yield from report.lines(severity)


def _report_for(item: InputPath) -> FileReport:
    report = FileReport(item.path, is_dir=item.is_dir, files=len(item.files),
                        bytes=sum(f.stat().st_size for f in item.files))
    if item.error is not None:
        report.add(Problem(item.path, 0, item.error))
    return report


def _conversations(path: Path, report: FileReport, progress: Callable[[int], None] | None = None,
                   preferences: bool = False) -> Iterator[tuple[int, Conversation | None, str | None]]:
    """(line, conversation, None) for each good record, (line, None, error) for a bad one; both are reported.

    With `preferences` (check only), a dpo record is validated too and yields
    its prompt + chosen conversation; convert has no dpo output, so there it is an error.
    """
    for line, record, error in iter_records(path, progress):
        report.conversations += 1
        warnings: list[str] = []
        if error is None:
            try:
                if not is_preference(record):
                    fmt, conv = protocol.parse_record(record, warnings=warnings)
                elif preferences:
                    fmt, conv = "dpo", read_preference(record, warnings).conversation()
                else:
                    raise ProtocolError("a dpo preference record (prompt/chosen/rejected) cannot be converted")
            except ProtocolError as e:
                error = str(e)
        if error is not None:
            report.add(Problem(str(path), line, error))
            yield line, None, error
            continue
        for warning in warnings:
            report.add(Problem(str(path), line, warning, "warning"))
        report.formats[fmt] += 1
        report.turns += len(conv.turns)
        yield line, conv, None


def read_file(path: str | os.PathLike, report: FileReport | None = None) -> Iterator[tuple[int, Conversation]]:
    """Parsed conversations of one file; problems go to `report`, or the first error raises."""
    p = Path(path)
    for line, conv, error in _conversations(p, report if report is not None else FileReport(str(p))):
        if conv is not None:
            yield line, conv
        elif report is None:
            raise ProtocolError(f"{p}:{line}: {error}")


@contextmanager
def _byte_progress(reports: list[FileReport], enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over input bytes on stderr; tqdm turns itself off when stderr is not a terminal."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=sum(r.bytes for r in reports), unit="B", unit_scale=True, file=sys.stderr,
              disable=None, leave=False, mininterval=0.5) as bar:
        yield None if bar.disable else bar.update


def check_files(paths: list[str], show_progress: bool = False) -> list[FileReport]:
    """One report per input path; folders are walked recursively."""
    inputs = resolve_inputs(paths)
    reports = [_report_for(item) for item in inputs]
    with _byte_progress(reports, show_progress) as progress:
        for item, report in zip(inputs, reports):
            for path in item.files:
                for _ in _conversations(path, report, progress, preferences=True):
                    pass
    return reports


@dataclass
class ConvertResult:
    written: int
    skipped: int  # invalid records left out (with skip_invalid)
    reports: list[FileReport]

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.reports)

    @property
    def warnings(self) -> int:
        return sum(r.warnings for r in self.reports)

    @property
    def ok(self) -> bool:
        """Whether the output was written."""
        return self.errors == self.skipped


def convert_files(paths: list[str], to: str, out: str | os.PathLike, skip_invalid: bool = False,
                  show_progress: bool = False) -> ConvertResult:
    """Convert all inputs to one JSONL file in one streaming pass, atomically.

    Any invalid record means nothing is written, unless `skip_invalid`: then
    the good records are written and the bad ones counted in `skipped`. A
    missing input path always means nothing is written.
    """
    if to not in FORMATS_OUT:
        raise ValueError(f"unknown output format {to!r}; choose from {', '.join(FORMATS_OUT)}")
    out = Path(out)
    inputs = resolve_inputs(paths, exclude=out)
    reports = [_report_for(item) for item in inputs]
    if any(item.error for item in inputs):
        return ConvertResult(0, 0, reports)
    written = bad = 0
    try:
        with atomic_file(out) as f, _byte_progress(reports, show_progress) as progress:
            for item, report in zip(inputs, reports):
                for path in item.files:
                    for _, conv, _ in _conversations(path, report, progress):
                        if conv is None:
                            bad += 1
                        elif skip_invalid or not bad:  # once the output is lost, only read on to report
                            f.write(json.dumps(protocol.write_record(conv, to), ensure_ascii=False) + "\n")
                            written += 1
            if bad and not skip_invalid:
                raise _NothingWritten
    except _NothingWritten:
        return ConvertResult(0, 0, reports)
    return ConvertResult(written, bad, reports)


class _NothingWritten(Exception):
    """Raised inside the atomic write to discard the output: some record was invalid."""


# ---------------------------------------------------------------- summaries for the CLI

def peak_rss_bytes() -> int | None:
    """This process's peak resident memory; ru_maxrss is KiB on Linux, bytes on macOS."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def check_summary(reports: list[FileReport], seconds: float) -> str:
    """The closing line of `moss data check`: totals, speed and peak memory."""
    conversations = sum(r.conversations for r in reports)
    files = sum(r.files for r in reports)
    megabytes = sum(r.bytes for r in reports) / 1e6
    seconds = max(seconds, 1e-6)
    rss = peak_rss_bytes()
    return (f"checked {conversations} conversations in {files} file{'' if files == 1 else 's'}: "
            f"{sum(r.errors for r in reports)} errors, {sum(r.warnings for r in reports)} warnings; "
            f"{megabytes:.1f} MB in {seconds:.2f} s ({conversations / seconds:,.0f} conversations/s, "
            f"{megabytes / seconds:.1f} MB/s), peak RSS {'unknown' if rss is None else f'{rss / 1e6:.0f} MB'}")
