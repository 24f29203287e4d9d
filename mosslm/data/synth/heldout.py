"""The held-out splits: what eval asks and training never shows.

Generalisation is tested, not memory. Each split is a hash of the item's text,
so it is the same for every seed and every recipe: about 10% of the arithmetic
space and of the equations, and 15% of the identity questions.
"""

from __future__ import annotations

import hashlib
from typing import Any

HELDOUT_PERMILLE = 100  # share of the arithmetic space (and of the equations) reserved for eval, in 1/1000
IDENTITY_HELDOUT_PERCENT = 15


def hash32(key: str) -> int:
    """The first 32 bits of the key's SHA-256: stable across processes, unlike hash()."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def expr_key(a: Any, op: str, b: Any) -> str:
    """Canonical text of `a op b`; + and * are commutative, so 91*37 is 37*91."""
    x, y = str(a), str(b)
    if op in "+*" and (float(y), y) < (float(x), x):
        x, y = y, x
    return f"{x}{op}{y}"


def is_heldout(a: Any, op: str, b: Any) -> bool:
    """True for the ~10% of expressions reserved for eval (independent of the seed)."""
    return hash32(expr_key(a, op, b)) % 1000 < HELDOUT_PERMILLE


def equation_heldout(equation: str) -> bool:
    return hash32("eq:" + equation.replace(" ", "")) % 1000 < HELDOUT_PERMILLE


def identity_heldout(text: str) -> bool:
    return hash32("identity:" + text) % 100 < IDENTITY_HELDOUT_PERCENT
