"""A safe calculator for the MOSS `Calculate("...")` command.

The expression is parsed with `ast` and walked over a whitelist of node types;
nothing is ever passed to eval/exec/compile. Every operation is bounded so that
model-written input can neither hang the server nor exhaust memory.

`calculate` reproduces the text the original MOSS tool recorded in the SFT data:
Python semantics (`/` is true division, so `6/3` gives `2.0`), the result
rendered with `str()`, and `No result.` for anything it cannot evaluate. The
data also shows it accepting `name = expr; ...; expr` (assignments, then a final
expression), which is supported. It did not understand `7!`, implicit
multiplication, `[...]` brackets, comparisons or equations, so those are rejected.
"""

from __future__ import annotations

import ast
import builtins
import cmath
import keyword
import math
import operator
import re
from typing import Callable, Union

Number = Union[int, float, complex]

NO_RESULT = "No result."
MAX_LENGTH = 2000   # characters of input
MAX_DEPTH = 200     # AST nesting; keeps the recursive walk far from Python's recursion limit
# 4300 digits is CPython's default int->str limit, so every accepted int can be printed.
MAX_INT_BITS = int(4300 * math.log2(10))
MAX_FACTORIAL = 1000


class CalculatorError(ValueError):
    """The expression is not allowed, malformed, or its evaluation failed."""


def _check_int_size(bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise CalculatorError("integer result too large")


def _power(base: Number, exp: Number) -> Number:
    # int ** int is the one exact operation whose cost explodes (9**9**9), so estimate
    # the result's size before computing it; float/complex powers overflow on their own.
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        _check_int_size(exp * math.log2(abs(base)))
    return base ** exp


def _pow(base: Number, exp: Number, mod: int | None = None) -> Number:
    if mod is None:
        return _power(base, exp)
    return pow(operator.index(base), operator.index(exp), operator.index(mod))  # modular: cheap


def _factorial(n: int) -> int:
    if operator.index(n) > MAX_FACTORIAL:
        raise CalculatorError(f"factorial argument above {MAX_FACTORIAL}")
    return math.factorial(n)


def _comb(n: int, k: int) -> int:
    n, k = operator.index(n), operator.index(k)
    if 0 <= k <= n:  # comb(n, k) <= n ** min(k, n - k)
        _check_int_size(min(k, n - k) * math.log2(n + 1))
    return math.comb(n, k)


def _perm(n: int, k: int | None = None) -> int:
    n = operator.index(n)
    k = n if k is None else operator.index(k)
    if 0 <= k <= n:  # perm(n, k) <= n ** k
        _check_int_size(k * math.log2(n + 1))
    return math.perm(n, k)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "asin": math.asin, "acos": math.acos, "atan": math.atan, "atan2": math.atan2,
    "arcsin": math.asin, "arccos": math.acos, "arctan": math.atan,
    "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh,
    "asinh": math.asinh, "acosh": math.acosh, "atanh": math.atanh,
    "exp": math.exp, "log": _log, "ln": math.log, "log10": math.log10, "log2": math.log2,
    "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil, "trunc": math.trunc,
    "factorial": _factorial, "comb": _comb, "perm": _perm, "gcd": math.gcd, "lcm": math.lcm,
    "pow": _pow, "degrees": math.degrees, "radians": math.radians, "hypot": math.hypot,
    "min": min, "max": max,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

BINARY_OPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: _power,
}
UNARY_OPS: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos, ast.USub: operator.neg,
}

# Full-width ASCII (U+FF01..U+FF5E) as typed by Chinese input methods, plus the usual
# typographic operators. Not NFKC: that would also turn `3²` into `32`.
_TRANSLATION = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_TRANSLATION.update({ord("×"): "*", ord("÷"): "/", ord("−"): "-", ord("·"): "*"})


# `p = (a+b)/2` before a `;`; `(?!=)` keeps `==` out. Only plain names can be bound.
_ASSIGNMENT = re.compile(r"\s*([A-Za-z_]\w*)\s*=(?!=)(.*)", re.S)


def _preprocess(expression: str) -> str:
    # In the recorded data `^` always means power (`3^2`, `8^(1/3)`), never xor.
    return expression.translate(_TRANSLATION).replace("^", "**").strip()


def _eval(node: ast.AST, env: dict[str, Number], depth: int = 0) -> Number:
    if depth > MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _eval(node.body, env, depth + 1)
    if isinstance(node, ast.Constant):
        # bool is an int subclass but not a number anyone meant; strings etc. are refused.
        if type(node.value) in (int, float, complex):
            return node.value
        raise CalculatorError(f"unsupported constant {node.value!r}")
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY_OPS:
        return UNARY_OPS[type(node.op)](_eval(node.operand, env, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_OPS:
        left = _eval(node.left, env, depth + 1)
        right = _eval(node.right, env, depth + 1)
        return _bounded(BINARY_OPS[type(node.op)](left, right))
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        if node.id.lower() in CONSTANTS:
            return CONSTANTS[node.id.lower()]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.Call):
        name = node.func.id.lower() if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS or node.keywords:
            raise CalculatorError("unsupported function call")
        # A `*iterable` argument is an ast.Starred, which the recursive call refuses.
        args = [_eval(arg, env, depth + 1) for arg in node.args]
        return _bounded(FUNCTIONS[name](*args))
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


def _bounded(value: Number) -> Number:
    # Growth by + - * lcm ... is checked after each step; each step's inputs are bounded,
    # so computing one over-size intermediate stays cheap.
    if isinstance(value, bool) or not isinstance(value, (int, float, complex)):
        raise CalculatorError("result is not a number")
    if isinstance(value, int):
        _check_int_size(value.bit_length())
    elif not cmath.isfinite(value):
        raise CalculatorError("result overflowed")  # inf/nan is an overflow, not an answer
    return value


def evaluate(expression: str) -> float | int | complex:
    """Evaluate a math expression safely; raise CalculatorError on any problem."""
    if not isinstance(expression, str):
        raise CalculatorError("expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    try:
        *assignments, final = _preprocess(expression).split(";")
        env: dict[str, Number] = {}
        for statement in assignments:
            match = _ASSIGNMENT.fullmatch(statement)
            if match is None:
                raise CalculatorError(f"not an assignment: {statement.strip()!r}")
            if keyword.iskeyword(match[1]) or hasattr(builtins, match[1]):  # `lambda = 1`, `open = 1`
                raise CalculatorError(f"cannot assign to {match[1]!r}")
            env[match[1]] = _eval(ast.parse(match[2].strip(), mode="eval"), env)
        return _bounded(_eval(ast.parse(final.strip(), mode="eval"), env))
    except CalculatorError:
        raise
    except (SyntaxError, ValueError, TypeError, ArithmeticError,
            RecursionError, MemoryError) as exc:
        raise CalculatorError(str(exc) or type(exc).__name__) from exc


def calculate(expression: str) -> str:
    """The tool's answer as the original MOSS calculator printed it, or `No result.`."""
    try:
        return str(evaluate(expression))
    except Exception:  # the tool must answer, never raise
        return NO_RESULT
