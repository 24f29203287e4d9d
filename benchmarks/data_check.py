"""Speed and memory of `moss data check` on a one-conversation-per-line file.

    python benchmarks/data_check.py [--lines 100000] [--json]

Writes a .jsonl file of N conversations in the released MOSS layout (mixed
plain, plugin, inline-Results Text2Image and stray-terminator records, with
random text so the file is not trivially compressible), then runs
`python -m mosslm data check FILE` as a child process on the first N/10 lines
and on all N. For each run it prints lines, MB, seconds (the CLI's own timing,
and the child's wall time with interpreter start-up), conversations/s and the
child's peak RSS (from os.wait4, that child's own rusage, and as the CLI
printed it). Streaming
reading means the peak RSS ratio of the two runs stays close to 1 while the
file grows 10x.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosslm import protocol

SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sha", "vo", "pe", "zin", "qua", "dor", "ex", "ly", "bim", "fu"]
SCAFFOLD_NONE = {"Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n", "Commands": "<|Commands|>: None<eoc>\n",
                 "Tool Responses": "<|Results|>: None<eor>\n"}


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(n))


def _hanzi(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(n))


def _text(rng: random.Random) -> str:
    return f"{_words(rng, rng.randint(4, 30))} {_hanzi(rng, rng.randint(2, 40))} {rng.randint(0, 10**6)}"


def _turn(rng: random.Random, kind: str) -> dict[str, str]:
    human = f"<|Human|>: {_text(rng)}<eoh>\n"
    reply = _text(rng)
    if kind == "plain":
        return {"Human": human, **(SCAFFOLD_NONE if rng.random() < 0.5 else {}), "MOSS": f"<|MOSS|>: {reply}<eom>\n"}
    if kind == "calculate":
        a, b = rng.randint(1, 10**5), rng.randint(1, 10**5)
        return {"Human": human, "Inner Thoughts": f"<|Inner Thoughts|>: {_text(rng)}<eot>\n",
                "Commands": f'<|Commands|>: Calculate("{a}*{b}")<eoc>\n',
                "Tool Responses": f"<|Results|>:\nCalculate(\"{a}*{b}\") => '{a * b}'\n<eor>\n",
                "MOSS": f"<|MOSS|>: {reply} {a * b}<eom>\n"}
    if kind == "text2image":
        return {"Human": human, "Inner Thoughts": f"<|Inner Thoughts|>: {_text(rng)}<eot>\n",
                "Commands": f'<|Commands|>: Text2Image("{_words(rng, 6)}")<eoc>\n',
                "Tool Responses": "<|Results|>: Image generated successfully.<eor>\n",
                "MOSS": f"<|MOSS|>: {reply}<eom>\n"}
    # search, with the released quirk of an <eor> before the reply's <eom>
    query = _words(rng, 3)
    snippets = "".join(f'<|{i}|>: "{_text(rng)}"\n' for i in range(1, 4))
    return {"Human": human, "Inner Thoughts": f"<|Inner Thoughts|>: {_text(rng)}<eot>\n",
            "Commands": f'<|Commands|>: Search("{query}")<eoc>\n',
            "Tool Responses": f'<|Results|>:\nSearch("{query}") =>\n{snippets}<eor>\n',
            "MOSS": f"<|MOSS|>: {reply}<sup><|1|></sup><eor><eom>\n"}


def conversation(rng: random.Random, i: int) -> dict:
    kind = rng.choices(["plain", "calculate", "text2image", "search"], weights=[6, 2, 1, 1])[0]
    plugins = {"plain": [], "calculate": ["Calculate"], "text2image": ["Text2Image"], "search": ["Search"]}[kind]
    turns = [_turn(rng, kind)] + [_turn(rng, "plain") for _ in range(rng.randint(0, 3))]
    record = {"conversation_id": i, "meta_instruction": protocol.meta_instruction("moss", plugins),
              "num_turns": len(turns), "chat": {f"turn_{n}": t for n, t in enumerate(turns, 1)},
              "category": "tool" if plugins else rng.choice(["harmless_zh", "harmless_en", "writing_zh"])}
    return record


def write_file(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(json.dumps(conversation(rng, i), ensure_ascii=False) + "\n")


def first_lines(src: Path, dst: Path, lines: int) -> None:
    with open(src, "rb") as f, open(dst, "wb") as out:
        for _ in range(lines):
            out.write(f.readline())


_CLI_LINE = re.compile(r"^checked (\d+) conversations in \d+ files?: (\d+) errors, (\d+) warnings; "
                       r"[\d.]+ MB in ([\d.]+) s .* peak RSS (\d+) MB$", re.M)


def run_check(path: Path) -> dict:
    """One `moss data check` child: wall time, its own peak RSS and what it printed."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "mosslm", "data", "check", str(path)],
                                 stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone, unlike RUSAGE_CHILDREN
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        printed = out.read()
    m = _CLI_LINE.search(printed)
    if child.returncode != 0 or m is None:
        raise SystemExit(f"moss data check failed (rc {child.returncode}):\n{printed[-2000:]}")
    lines = int(m[1])
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    checking = float(m[4])  # the CLI's own timing: reading and checking, without interpreter start-up
    return {"lines": lines, "mb": path.stat().st_size / 1e6, "seconds": checking, "wall_seconds": seconds,
            "conversations_per_s": lines / max(checking, 1e-6), "peak_rss_mb": peak / 1e6,
            "cli_peak_rss_mb": int(m[5]), "errors": int(m[2]), "warnings": int(m[3])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000, help="conversations in the big file (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.lines < 10:
        parser.error("--lines must be at least 10")
    with tempfile.TemporaryDirectory(prefix="mosslm-data-check-") as tmp:
        big, small = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl"
        write_file(big, args.lines, args.seed)
        first_lines(big, small, args.lines // 10)
        runs = [run_check(small), run_check(big)]
    result = {"runs": runs, "size_ratio": runs[1]["mb"] / runs[0]["mb"],
              "peak_rss_ratio": runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]}
    if args.json:
        print(json.dumps(result))
        return 0
    print("| lines | MB | seconds | wall seconds | conversations/s | peak RSS MB (wait4) | peak RSS MB (CLI) "
          "| warnings |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['lines']:,} | {r['mb']:.1f} | {r['seconds']:.2f} | {r['wall_seconds']:.2f} | "
              f"{r['conversations_per_s']:,.0f} | "
              f"{r['peak_rss_mb']:.1f} | {r['cli_peak_rss_mb']} | {r['warnings']:,} |")
    print(f"file size ratio {result['size_ratio']:.2f}x, peak RSS ratio {result['peak_rss_ratio']:.2f}x "
          f"(bounded memory keeps it close to 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
