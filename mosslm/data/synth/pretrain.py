"""Pretraining documents: arithmetic statements, facts, descriptions, everyday life,
short programs, aligned bilingual text, and (plugins recipe) handbook pages,
equations and copy practice.

Arithmetic in these documents comes from the training side of the held-out
split only, so the eval's expressions never appear in any training file.
Tables: resources/synth/pretrain.json, and the facts of chat.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ...plugins.calculator import calculate
from . import plugins
from .arithmetic import SHOWN, arith_reply, triple
from .chat import world_fact
from .heldout import is_heldout
from .tables import random_lang, table

_T = table("pretrain")
DESCRIPTIONS: list[list[str]] = _T["descriptions"]
DAILY: dict[str, list[list]] = _T["daily_slots"]


def _pick(pair: tuple[str, str] | list[str], lang: str) -> str:
    return pair[0] if lang == "zh" else pair[1]


def _joined(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)  # Chinese runs sentences together


# ---------------------------------------------------------------- arithmetic

def _fact_sentence(rng: random.Random, lang: str, equation: bool) -> str:
    a, op, b = triple(rng)
    r = calculate(f"{a}{op}{b}")
    if equation:
        return f"{a} {SHOWN[op] if lang == 'zh' else op} {b} = {r}"
    return arith_reply(a, op, b, r, lang)


def _times_table(lang: str, x: int) -> str:
    lines = [f"{x} × {y} = {x * y}" for y in range(1, 10) if not is_heldout(x, "*", y)]
    return "\n".join([_T["times_table"][lang].format(x=x)] + lines)


def doc_arithmetic(rng: random.Random, lang: str) -> str:
    if rng.random() < 0.15:
        return _times_table(lang, rng.randint(2, 19))
    equation = rng.random() < 0.3  # one equation per line, else running sentences
    sep = "\n" if equation else ("" if lang == "zh" else " ")
    return sep.join(_fact_sentence(rng, lang, equation) for _ in range(rng.randint(6, 14)))


# ---------------------------------------------------------------- facts, descriptions, everyday life

def doc_facts(rng: random.Random, lang: str) -> str:
    return _joined([_pick(world_fact(rng), lang) for _ in range(rng.randint(4, 9))], lang)


def doc_descriptions(rng: random.Random, lang: str) -> str:
    return _joined([_pick(d, lang) for d in rng.sample(DESCRIPTIONS, rng.randint(3, 6))], lang)


def _daily(sentence: str, **slots: object) -> tuple[str, str]:
    templates = _T["daily_sentences"][sentence]
    return templates["zh"].format(**slots), templates["en"].format(**slots)


def _daily_pair(rng: random.Random) -> tuple[str, str]:
    """One aligned (Chinese, English) everyday sentence; slots z*: Chinese, e*: English."""
    (zn, en), kind = rng.choice(DAILY["name"]), rng.randrange(7)
    if kind == 0:
        (za, ea), (zp, ep), h = rng.choice(DAILY["act"]), rng.choice(DAILY["place"]), rng.randint(6, 9)
        return _daily("morning", zn=zn, en=en, za=za, ea=ea, zp=zp, ep=ep, h=h)
    if kind == 1:
        (zd, ed), (zp, ep) = rng.choice(DAILY["day"]), rng.choice(DAILY["place"])
        return _daily("outing", zn=zn, en=en, zd=zd, ed=ed, zp=zp, ep=ep)
    if kind == 2:
        (zf, ef), (zs, es) = rng.choice(DAILY["food"]), rng.choice(DAILY["season"])
        return _daily("food", zn=zn, en=en, zf=zf, ef=ef, zs=zs, es=es)
    if kind == 3:
        (zf, ef) = rng.choice(DAILY["fruit"])
        k, p = rng.randint(2, 12), rng.randint(1, 9)
        while is_heldout(k, "*", p):  # a price sum is arithmetic too: training side only
            k, p = rng.randint(2, 12), rng.randint(1, 9)
        return _daily("shopping", zn=zn, en=en, zf=zf, ef=ef, k=k, p=p, total=k * p)
    if kind == 4:
        k, m = rng.randint(1, 20), rng.randint(1, 20)
        while is_heldout(k, "+", m):
            k, m = rng.randint(1, 20), rng.randint(1, 20)
        return _daily("books", zn=zn, en=en, k=k, m=m, total=k + m)
    if kind == 5:
        (zd, ed), (zw, ew, zpl, epl) = rng.choice(DAILY["day"]), rng.choice(DAILY["plan"])
        return _daily("forecast", zn=zn, en=en, zd=zd, ed=ed, zw=zw, ew=ew, zpl=zpl, epl=epl)
    (zs, es), k = rng.choice(DAILY["skill"]), rng.choice((10, 15, 20, 30, 45, 60))
    return _daily("practice", zn=zn, en=en, zs=zs, es=es, k=k)


def doc_daily(rng: random.Random, lang: str) -> str:
    return _joined([_pick(_daily_pair(rng), lang) for _ in range(rng.randint(4, 9))], lang)


# ---------------------------------------------------------------- programs

def _program(name: str, lang: str, **slots: object) -> str:
    snippet = _T["snippets"][name]
    return snippet["note"][lang].format(**slots) + "\n" + "\n".join(snippet["code"]).format(**slots)


def _snippet(rng: random.Random, lang: str) -> str:
    kind = rng.randrange(7)
    if kind in (0, 1):
        op, name = ("+", "add") if kind == 0 else ("*", "multiply")
        a, _, b = triple(rng, ops=op)
        return _program(name, lang, a=a, b=b, result=calculate(f"{a}{op}{b}"))
    if kind == 2:
        n = rng.randint(3, 100)
        return _program("sum_range", lang, n=n, result=n * (n + 1) // 2)
    if kind == 3:
        n = rng.randint(3, 9)
        return _program("squares", lang, n=n, result=[x * x for x in range(n)])
    if kind == 4:
        k = rng.randint(1, 999)
        return _program("is_even", lang, k=k, result=k % 2 == 0)
    if kind == 5:
        w = rng.choice(_T["words"])
        return _program("reverse", lang, word=w, result=w[::-1])
    n = rng.randint(2, 10)
    fact = 1
    for i in range(2, n + 1):
        fact *= i
    return _program("factorial", lang, n=n, result=fact)


def doc_code(rng: random.Random, lang: str) -> str:
    return "\n".join(_snippet(rng, lang) for _ in range(rng.randint(2, 4)))


def doc_bilingual(rng: random.Random, lang: str) -> str:
    makers = (world_fact, _daily_pair, lambda g: g.choice(DESCRIPTIONS))
    pairs = [rng.choice(makers)(rng) for _ in range(rng.randint(3, 6))]
    return "\n".join(_T["bilingual"][lang].format(z=z, e=e) for z, e in pairs)


# ---------------------------------------------------------------- the plugins recipe: handbook and equations

def doc_handbook(rng: random.Random, lang: str) -> str:
    """Two or three pages of the bundled handbook, so its language is not new at SFT time."""
    docs, _ = plugins.handbook()
    pages = rng.sample([d for (_, lg), d in sorted(docs.items()) if lg == lang], rng.randint(2, 3))
    return "\n\n".join(f"{d['title']}\n{d['text']}" for d in pages)


def doc_equations(rng: random.Random, lang: str) -> str:
    lines = []
    for _ in range(rng.randint(4, 8)):
        eq = plugins.equation(rng)
        solution = plugins.solution_text(plugins.solution_of(eq), lang)
        lines.append(_T["equation"][lang].format(eq=eq, solution=solution))
    return "\n".join(lines)


def doc_echo(rng: random.Random, lang: str) -> str:
    """Handbook sentences, each said twice: practice in copying text, which Search replies need."""
    docs, _ = plugins.handbook()
    said = [s for (_, lg), d in sorted(docs.items()) if lg == lang for s in plugins.sentences(d["text"])]
    picked = rng.sample(said, rng.randint(2, 4))
    return "\n\n".join(f"{s}\n{s}" for s in picked)


PRETRAIN_MAKERS: dict[str, Callable[[random.Random, str], str]] = {
    "arithmetic": doc_arithmetic, "facts": doc_facts, "descriptions": doc_descriptions,
    "daily": doc_daily, "code": doc_code, "bilingual": doc_bilingual,
    "handbook": doc_handbook, "equations": doc_equations, "echo": doc_echo,
}


def pretrain_docs(rng: random.Random, counts: dict[str, int]) -> list[str]:
    docs = [PRETRAIN_MAKERS[kind](rng, random_lang(rng)) for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(docs)
    return docs
