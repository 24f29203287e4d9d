"""The arithmetic space of the Calculate plugin: operands, questions, replies, follow-ups.

An expression is drawn from the training or the eval-only part of the space
(`heldout.is_heldout`); every result is the real calculator's output string,
so training sees the exact bytes the agent will show the model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from ... import protocol
from ...plugins.calculator import calculate
from ...protocol import Command, Turn
from .heldout import expr_key, is_heldout
from .tables import table

OPS = ("+", "-", "*", "/")
OP_WEIGHTS = (3, 3, 3, 1)
NICE_DIVISORS = (2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000)

_T = table("arithmetic")
SHOWN: dict[str, str] = _T["shown"]  # the symbol people type in a question: × for *, ÷ for /
REPLY_FORMS = len(_T["replies"]["zh"])  # both languages have the same reply forms, in the same order

_EXPR_RE = re.compile(r"(-?\d+(?:\.\d+)?)([-+*/])(-?\d+(?:\.\d+)?)")


def split_expr(expr: str) -> tuple[str, str, str] | None:
    """`"37*91"` -> ("37", "*", "91"); None for anything else."""
    m = _EXPR_RE.fullmatch(expr)
    return (m[1], m[2], m[3]) if m else None


# ---------------------------------------------------------------- drawing expressions

def _operand(rng: random.Random) -> int:
    digits = rng.randint(1, 4)
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def short_result(value: str) -> bool:
    """A result a person would write out: no exponent, at most 3 decimal places."""
    return "e" not in value and len(value.partition(".")[2]) <= 3


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "/":
        if rng.random() < 0.6:  # exact quotient
            b = rng.randint(2, 99)
            return b * rng.randint(1, 9999 // b), b
        while True:  # a terminating decimal with at most 3 places
            a, b = _operand(rng), rng.choice(NICE_DIVISORS)
            if a != b and short_result(calculate(f"{a}/{b}")):
                return a, b
    a, b = _operand(rng), _operand(rng)
    if op == "-" and a < b and rng.random() < 0.75:
        a, b = b, a
    return a, b


def triple(rng: random.Random, heldout: bool = False, ops: str = "".join(OPS)) -> tuple[int, str, int]:
    """An operand pair and operator from the training (or the eval-only) part of the space."""
    weights = [OP_WEIGHTS[OPS.index(o)] for o in ops]
    while True:
        op = rng.choices(ops, weights)[0]
        a, b = _operands(rng, op)
        if is_heldout(a, op, b) == heldout:
            return a, op, b


# ---------------------------------------------------------------- questions and replies

def _slots(a: Any, op: str, b: Any, lang: str, rng: random.Random | None = None) -> dict[str, Any]:
    words = _T["operator_words"][lang][op]
    return {"a": a, "b": b, "s": op, "S": SHOWN[op], "w": rng.choice(words) if rng else words[0]}


def arith_question(rng: random.Random, a: Any, op: str, b: Any, lang: str) -> str:
    pool = _T["questions"][lang] + _T["questions_by_operator"][lang][op]
    return rng.choice(pool).format(**_slots(a, op, b, lang, rng))


def arith_reply(a: Any, op: str, b: Any, result: str, lang: str, form: int = 0) -> str:
    """Reply form 0 is the canonical one ("37 乘以 91 等于 3367。")."""
    return _T["replies"][lang][form].format(r=result, **_slots(a, op, b, lang))


def reply_form(rng: random.Random) -> int:
    return 0 if rng.random() < 0.7 else rng.randint(1, REPLY_FORMS - 1)


def calculate_turn(human: str, expr: str, lang: str, reply: Callable[[str], str]) -> Turn:
    """A Calculate turn; the reply is built from the tool's exact result string."""
    value = calculate(expr)
    command = Command("Calculate", expr)
    return Turn(human=human, reply=reply(value), plugin=True, thoughts=_T["thought"][lang].format(expr=expr),
                commands=protocol.render_commands([command]), results=protocol.calculate_block(command, value))


def arithmetic_turn(rng: random.Random, lang: str, ops: str = "".join(OPS)) -> tuple[Turn, tuple[int, str, int]]:
    a, op, b = triple(rng, ops=ops)
    form = reply_form(rng)
    turn = calculate_turn(arith_question(rng, a, op, b, lang), f"{a}{op}{b}", lang,
                          lambda r: arith_reply(a, op, b, r, lang, form))
    return turn, (a, op, b)


def follow_up(rng: random.Random, r: int, lang: str, heldout: bool = False) -> tuple[str, str, int] | None:
    """A follow-up operation on an integer result, from the wanted part of the space."""
    for _ in range(40):
        op = rng.choice(OPS)
        k = {"*": rng.randint(2, 12), "+": rng.randint(1, 999), "-": rng.randint(1, 999), "/": rng.choice((2, 4, 5, 10))}[op]
        if is_heldout(r, op, k) == heldout and short_result(calculate(f"{r}{op}{k}")):
            return rng.choice(_T["follow_ups"][lang][op]).format(k=k), op, k
    return None


# ---------------------------------------------------------------- eval items

def eval_items(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Held-out expressions, alternating languages; a tenth are follow-ups with the earlier exchange as history."""
    items, seen = [], set()
    n_follow = max(1, n // 10)
    while len(items) < n - n_follow:
        a, op, b = triple(rng, heldout=True)
        if expr_key(a, op, b) in seen:
            continue
        seen.add(expr_key(a, op, b))
        lang = "zh" if len(items) % 2 == 0 else "en"
        expr = f"{a}{op}{b}"
        items.append({"task": "arithmetic", "lang": lang, "question": arith_question(rng, a, op, b, lang),
                      "expected": calculate(expr), "expr": expr})
    while len(items) < n:
        a, op, b = triple(rng, heldout=True, ops="+-*")
        lang = "zh" if len(items) % 2 == 0 else "en"
        r = calculate(f"{a}{op}{b}")
        step = follow_up(rng, int(r), lang, heldout=True)
        if step is None or expr_key(a, op, b) in seen:
            continue
        seen.add(expr_key(a, op, b))
        human, op2, k = step
        expr = f"{r}{op2}{k}"
        q1 = arith_question(rng, a, op, b, lang)
        items.append({"task": "arithmetic", "lang": lang, "question": human, "expected": calculate(expr), "expr": expr,
                      "history": [[q1, arith_reply(a, op, b, r, lang)]]})
    return items
