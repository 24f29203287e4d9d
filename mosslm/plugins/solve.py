"""Equation solver for the MOSS `Solve("...")` command.

`solve(text)` returns the body of the result block (`protocol.solve_block`), or
None when there is no solution, infinitely many (a free variable remains), or
anything fails. Input: `;`-separated equations, each `lhs = rhs` or a bare
expression meaning `= 0`; `^` is power, `2x`/`2xy` are implicit products (names
with digits such as `x1` stay whole). Text with `__`, `import`, `lambda`,
attribute access or odd characters is rejected; `parse_expr` then sees only
whitelisted names and no builtins.

Body: `name = value` lines, variables sorted by name. Exact integers print
exactly (`x = 2`); other reals as `'%.15g'` (1980/23 -> `86.0869565217391`,
5/2 -> `2.5`). Complex roots are kept as `re + im*I` with the same rule
(`x = -1 + 2*I`, `x = 2*I`). Several solutions: each one's lines in turn,
sorted by value (variables in name order, real then imaginary part).

The sympy work runs in a spawned child, killed `timeout` seconds after it has
started up (importing sympy), so a call never hangs.
"""

from __future__ import annotations

import multiprocessing
import re
from multiprocessing import connection as mp_connection

MAX_LENGTH = 500
MAX_EQUATIONS = 10
MAX_UNKNOWNS = 10
STARTUP_LIMIT = 30.0  # seconds allowed for the child to import sympy

_ALLOWED = re.compile(r"[A-Za-z0-9_\s+\-*/^().=;,]*")
_FORBIDDEN = re.compile(r"__|import|lambda|\.\s*[A-Za-z_]")


class SolveError(ValueError):
    """The input is not allowed or could not be solved."""


def _split(text: str) -> list[str]:
    """Cheap checks on the raw text; returns the equation strings."""
    if len(text) > MAX_LENGTH:
        raise SolveError("input too long")
    if not _ALLOWED.fullmatch(text) or _FORBIDDEN.search(text):
        raise SolveError("forbidden input")
    parts = [p.strip() for p in text.strip().rstrip(";").split(";")]
    if not parts or any(not p for p in parts) or len(parts) > MAX_EQUATIONS:
        raise SolveError("bad equation list")
    return parts


def _fmt_real(x: float) -> str:
    return "%.15g" % (x + 0.0)  # + 0.0 turns -0.0 into 0.0


def _format_value(v) -> tuple[tuple[float, float], str]:
    import sympy

    if v.is_Integer:
        return (float(v), 0.0), str(v)
    re_, im = (float(p) for p in sympy.N(v, 20, chop=True).as_real_imag())
    if im == 0:
        return (re_, 0.0), _fmt_real(re_)
    if re_ == 0:
        return (0.0, im), f"{_fmt_real(im)}*I"
    sign = "-" if im < 0 else "+"
    return (re_, im), f"{_fmt_real(re_)} {sign} {_fmt_real(abs(im))}*I"


def _solve_now(text: str) -> str | None:
    """The sympy part; runs inside the child process."""
    import sympy
    from sympy.core.function import AppliedUndef
    from sympy.parsing import sympy_parser as sp

    names = {"sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos,
             "tan": sympy.tan, "log": sympy.log, "ln": sympy.log,
             "exp": sympy.exp, "abs": sympy.Abs, "pi": sympy.pi, "E": sympy.E}
    glob = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float,
            "Rational": sympy.Rational, "Symbol": sympy.Symbol, "Number": sympy.Number}
    # implicit_multiplication_application, except that names with digits stay whole
    split = sp.split_symbols_custom(lambda n: n.isalpha() and sp._token_splittable(n))
    trans = sp.standard_transformations + (split, sp.implicit_multiplication,
                                           sp.implicit_application, sp.function_exponentiation,
                                           sp.convert_xor)

    def parse(s: str):
        expr = sp.parse_expr(s, local_dict=dict(names), global_dict=dict(glob),
                             transformations=trans)
        if not isinstance(expr, sympy.Expr) or expr.atoms(AppliedUndef):
            raise SolveError("not an expression")
        return expr

    exprs = []
    for eq in _split(text):
        sides = eq.split("=")
        if len(sides) > 2:
            raise SolveError("more than one '=' in an equation")
        lhs = parse(sides[0])
        exprs.append(lhs - parse(sides[1]) if len(sides) == 2 else lhs)
    exprs = [e for e in exprs if sympy.simplify(e) != 0]  # drop identities
    unknowns = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    if not exprs or not unknowns or len(unknowns) > MAX_UNKNOWNS:
        return None  # x = x (all identities) or 1 = 2 (no unknowns)

    def run(eqs, syms):  # one bare equation lets sympy fall back to CRootOf
        return sympy.solve(eqs if len(eqs) > 1 else eqs[0], syms, dict=True)

    try:
        sols = run(exprs, unknowns)
    except NotImplementedError:  # e.g. Abs(x): retry over the reals
        real = {s: sympy.Symbol(s.name, real=True) for s in unknowns}
        sols = run([e.xreplace(real) for e in exprs], list(real.values()))
        back = {r: s for s, r in real.items()}
        sols = [{back[k]: v for k, v in sol.items()} for sol in sols]
    rows = []
    for sol in sols:
        if set(sol) != set(unknowns) or any(v.free_symbols for v in sol.values()):
            return None  # a free variable remains: infinitely many solutions
        keys, lines = [], []
        for s in unknowns:
            key, shown = _format_value(sol[s])
            keys.append(key)
            lines.append(f"{s} = {shown}")
        rows.append((keys, lines))
    return "\n".join(line for _, lines in sorted(rows) for line in lines) or None


def _worker(text: str, conn) -> None:
    import sympy  # noqa: F401  (import before reporting ready)

    conn.send("ready")
    try:
        body = _solve_now(text)
    except Exception:  # noqa: BLE001  (any failure means "no result")
        body = None
    conn.send(("done", body))


def _receive(conn, proc, timeout: float):
    """The child's next message, or None if it died or `timeout` passed first."""
    ready = mp_connection.wait([conn, proc.sentinel], timeout)
    return conn.recv() if conn in ready else None  # a dead child's data still counts


def solve(text: str, timeout: float = 5.0) -> str | None:
    """Solve `;`-separated equations; the result body, or None (see module doc)."""
    try:
        _split(text)
    except SolveError:
        return None
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(text, child_conn), daemon=True)
    try:
        proc.start()
        child_conn.close()
        if _receive(conn, proc, STARTUP_LIMIT) != "ready":
            return None
        reply = _receive(conn, proc, timeout)
        return reply[1] if isinstance(reply, tuple) and reply[0] == "done" else None
    except (OSError, EOFError, RuntimeError):
        return None
    finally:
        if proc.is_alive():
            proc.kill()
        if proc.pid is not None:
            proc.join()
        conn.close()
