"""GSM8K-style math from JSONL (`question`, `answer` ending in `#### n`), with and without Calculate.

The reply's last number is its answer (commas removed), as GSM8K's own scripts read one. With the tool,
the model may call Calculate (the MOSS plugin loop runs the calls); the task also counts how often it did
and how many of its calls the calculator could evaluate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import protocol
from ..plugins.calculator import calculate
from .answers import Answerer, Asked

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class MathDataError(ValueError):
    pass


def gold(answer: str) -> str:
    if "####" not in answer:
        raise MathDataError("a GSM8K answer ends with '#### n'")
    return normalize(answer.rsplit("####", 1)[1].strip())


def normalize(number: str) -> str:
    n = number.replace(",", "").strip().rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", n):
        n = n.split(".")[0]
    return n


def predicted(reply: str) -> str | None:
    found = _NUMBER.findall(reply or "")
    return normalize(found[-1]) if found else None


def load(path: str | Path, limit: int | None = None) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise MathDataError(f"no GSM8K file at {p}")
    items = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append({"question": row["question"], "gold": gold(row["answer"])})
        except (json.JSONDecodeError, KeyError, TypeError, MathDataError) as e:
            raise MathDataError(f"{p}:{n}: a line is one JSON object with 'question' and 'answer' "
                                f"('... #### n'): {e}") from None
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise MathDataError(f"{p} holds no questions")
    return items


def score(items: list[dict], turns: list[protocol.Turn]) -> dict:
    correct = sum(predicted(t.reply) == item["gold"] for item, t in zip(items, turns))
    calls = [c for t in turns for c in protocol.parse_commands(t.commands or "") if c.name == "Calculate"]
    used = sum(any(c.name == "Calculate" for c in protocol.parse_commands(t.commands or "")) for t in turns)
    valid = sum(calculate(c.arg) != "No result." for c in calls)
    return {"accuracy": correct / len(items), "tool_call_rate": used / len(items),
            "valid_call_share": valid / len(calls) if calls else 0.0, "n": len(items)}


def run(answerer: Answerer, items: list[dict], bar=None) -> dict:
    asked = [Asked(item["question"]) for item in items]
    without = score(items, answerer.answer(asked, [], bar))
    result = {"accuracy_no_tool": without["accuracy"], "n": len(items)}
    if answerer.speaks_moss:
        with_tool = score(items, answerer.answer(asked, ["Calculate"], bar))
        result.update({"accuracy_tool": with_tool["accuracy"], "tool_call_rate": with_tool["tool_call_rate"],
                       "valid_call_share": with_tool["valid_call_share"]})
    return result
