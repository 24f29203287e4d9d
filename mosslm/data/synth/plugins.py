"""Turns for the Solve and Search plugins, two commands in one turn, and their eval items.

Results come from the real plugin code (sympy for Solve, the SQLite knowledge
base built from the bundled handbook for Search), so training sees the exact
bytes the agent will show the model. Held out from training: about 10% of the
equations (`heldout.equation_heldout`), the last question phrasing of each
list, and the handbook's "heldout" questions (new phrasings of its facts).
Tables: resources/synth/{solve,search,multi}.json.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from ... import protocol
from ...plugins import kb
from ...plugins.calculator import calculate
from ...plugins.registry import BUILTINS, Plugin, kb_search, run_commands
from ...plugins.solve import _solve_now
from ...protocol import Command, Turn
from .arithmetic import SHOWN, triple
from .heldout import equation_heldout
from .tables import table

QUESTIONS = kb.HANDBOOK.with_name("questions.jsonl")
_SOLVE = table("solve")
_SEARCH = table("search")
_MULTI = table("multi")

# ---------------------------------------------------------------- equations

def _term(coef: int, var: str, first: bool) -> str:
    if coef == 0:
        return ""
    sign = "-" if coef < 0 else ("" if first else "+")
    mag = abs(coef)
    return f"{sign}{'' if mag == 1 and var else mag}{var}"


def _poly(terms: list[tuple[int, str]]) -> str:
    out = ""
    for coef, var in terms:
        out += _term(coef, var, not out)
    return out or "0"


def _linear(rng: random.Random) -> tuple[str, str]:
    x = rng.randint(-12, 20)
    kind = rng.randrange(4)
    if kind == 0:  # ax+b=c
        a, b = rng.choice([k for k in range(-9, 10) if k]), rng.randint(-30, 30)
        return f"{_poly([(a, 'x'), (b, '')])}={a * x + b}", f"x = {x}"
    if kind == 1:  # a(x+b)=c
        a, b = rng.randint(2, 9), rng.choice([k for k in range(-9, 10) if k])
        return f"{a}({_poly([(1, 'x'), (b, '')])})={a * (x + b)}", f"x = {x}"
    if kind == 2:  # x/a+b=c, with x a multiple of a
        a, b = rng.randint(2, 9), rng.randint(-20, 20)
        x = a * rng.randint(-5, 8)
        return f"x/{a}{_term(b, '', False)}={x // a + b}", f"x = {x}"
    a, c = rng.randint(2, 9), rng.randint(1, 9)  # ax+b=cx+d
    while c == a:
        c = rng.randint(1, 9)
    b = rng.randint(-20, 20)
    return f"{_poly([(a, 'x'), (b, '')])}={_poly([(c, 'x'), (a * x + b - c * x, '')])}", f"x = {x}"


def _quadratic(rng: random.Random) -> tuple[str, str]:
    r1, r2 = sorted(rng.sample(range(-9, 10), 2))
    return f"{_poly([(1, 'x^2'), (-(r1 + r2), 'x'), (r1 * r2, '')])}=0", f"x = {r1}\nx = {r2}"


def _system(rng: random.Random) -> tuple[str, str]:
    x, y = rng.randint(-9, 12), rng.randint(-9, 12)
    while True:
        a1, b1, a2, b2 = (rng.choice((-3, -2, -1, 1, 1, 2, 3, 4, 5)) for _ in range(4))
        if a1 * b2 - a2 * b1:
            break
    e1 = f"{_poly([(a1, 'x'), (b1, 'y')])}={a1 * x + b1 * y}"
    e2 = f"{_poly([(a2, 'x'), (b2, 'y')])}={a2 * x + b2 * y}"
    return f"{e1};{e2}", f"x = {x}\ny = {y}"


# Every equation made here has integer solutions known by construction; they are
# written in the solver's own format (tests check them against the real solver),
# which keeps the corpus fast to build: sympy takes tens of ms per equation.
KNOWN_SOLUTIONS: dict[str, str] = {}


def equation(rng: random.Random, heldout: bool = False, kinds: str = "lqs") -> str:
    """A Solve argument with integer solutions, from the wanted side of the held-out split."""
    makers = {"l": _linear, "q": _quadratic, "s": _system}
    weights = {"l": 5, "q": 3, "s": 3}
    while True:
        kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        eq, solution = makers[kind](rng)
        if equation_heldout(eq) == heldout:
            KNOWN_SOLUTIONS[eq] = solution
            return eq


def solution_of(eq: str) -> str | None:
    """The Solve plugin's result body for an equation (known ones without running sympy)."""
    return KNOWN_SOLUTIONS.get(eq) or _solve_now(eq)


def solve_question(rng: random.Random, eq: str, lang: str, heldout: bool = False) -> str:
    """Questions in every phrasing but the last, which is kept for eval."""
    parts = eq.split(";")
    if len(parts) == 2:
        pool = _SOLVE["system_questions"][lang]
        template = pool[-1] if heldout else rng.choice(pool[:-1])
        return template.format(e1=parts[0], e2=parts[1])
    pool = _SOLVE["questions"][lang]
    return (pool[-1] if heldout else rng.choice(pool[:-1])).format(eq=eq)


def solution_text(solution: str, lang: str) -> str:
    """'x = 2\\nx = 3' -> 'x = 2 或 x = 3'; 'x = 6\\ny = 4' -> 'x = 6，y = 4'."""
    lines = solution.split("\n")
    names = [line.split(" = ")[0] for line in lines]
    joiners = _SOLVE["joiners"][lang]
    if len(set(names)) == len(names):  # one solution, one line per unknown
        return joiners["each"].join(lines)
    return joiners["either"].join(lines)


def solve_reply(solution: str, lang: str) -> str:
    return _SOLVE["reply"][lang].format(text=solution_text(solution, lang))


# ---------------------------------------------------------------- the plugins as the agent runs them

@cache
def handbook_kb() -> Path:
    """The handbook indexed once per process into a temp file (removed at exit with its folder)."""
    folder = Path(tempfile.mkdtemp(prefix="mosslm-handbook-"))
    import atexit
    import shutil
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "handbook.sqlite"
    kb.build(path, [str(kb.HANDBOOK)])
    return path


def synth_plugins(kb_file: Path | None = None) -> dict[str, Plugin]:
    """The plugins as the agent runs them, with Search over the handbook and Solve in-process."""
    return {"Search": replace(BUILTINS["Search"], run=lambda q: kb_search(kb_file or handbook_kb(), q)),
            "Calculate": BUILTINS["Calculate"],
            "Solve": replace(BUILTINS["Solve"], run=solution_of)}


def plugin_turn(human: str, thoughts: str, commands: list[Command], reply_of: Any) -> Turn:
    """A turn whose results come from running the commands; reply_of(results_text) builds the reply."""
    results = run_commands(commands, synth_plugins())
    return Turn(human=human, reply=reply_of(results), plugin=True, thoughts=thoughts,
                commands=protocol.render_commands(commands), results=results)


def solve_turn(rng: random.Random, lang: str) -> Turn:
    eq = equation(rng)
    solution = solution_of(eq)
    return plugin_turn(solve_question(rng, eq, lang), _SOLVE["thought"][lang].format(eq=eq),
                       [Command("Solve", eq)], lambda _: solve_reply(solution, lang))


# ---------------------------------------------------------------- Search over the handbook

@cache
def handbook() -> tuple[dict[tuple[str, str], dict], list[dict]]:
    """({(topic, lang): document}, questions) of the bundled handbook."""
    docs = {}
    for line in kb.HANDBOOK.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            docs[(d["topic"], d["lang"])] = d
    questions = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return docs, questions


# The query names the question's topic: the handbook page title, which finds the asked fact in the
# top 3 for 885 of 900 handbook questions (the others are left out of training). The speedrun models
# cannot copy a whole unseen question into the command (measured: they write back a remembered
# question, 15-22% well-formed even with thousands of distinct questions), but naming one of 30
# pages is a classification they learn when they see each page's vocabulary and names often
# enough. Measured on the `mini` plugins speedrun, right page on held-out questions: 43% with the
# handbook's training questions only, 53% adding questions about random spans of its sentences, 73%
# and then 95% (1500 steps) as more of those questions name the topic by one of the page's aliases.
NAMED_SHARE, SPAN_SHARE = 0.55, 0.2
_SNIPPET_RE = re.compile(r'(?m)^<\|(\d+)\|>: "(.*)"$')
sentences = kb.sentences


def answer_sentence(snippet: str, answer: str) -> str | None:
    """The sentence of a snippet that contains the answer span."""
    for sentence in sentences(snippet):
        if answer in sentence:
            return sentence
    return None


def cited(sentence: str, n: int) -> str:
    """The sentence with the citation mark before its final punctuation."""
    body, end = (sentence[:-1], sentence[-1]) if sentence[-1] in "。！？.!?" else (sentence, "")
    return f"{body}<sup><|{n}|></sup>{end}"


def _hit(results: str | None, doc: dict, answer: str) -> tuple[int, str] | None:
    """(citation number, answering sentence) of the first snippet from `doc` holding `answer`."""
    page = " ".join(doc["text"].split())
    for number, text in _SNIPPET_RE.findall(results or ""):  # a snippet of the page: its sentences, reordered
        if all(part in page for part in sentences(text)):
            sentence = answer_sentence(text, answer)
            if sentence:
                return int(number), sentence
    return None


def gold_hit(results: str | None, question: dict) -> tuple[int, str] | None:
    """(citation number, answering sentence) of the first snippet from the question's document."""
    docs, _ = handbook()
    return _hit(results, docs[(question["topic"], question["lang"])], question["answer"])


def _search_turn(human: str, lang: str, doc: dict, answer: str, query: str | None = None) -> Turn | None:
    command = Command("Search", query or doc["title"])
    results = run_commands([command], synth_plugins())
    hit = _hit(results, doc, answer)
    if hit is None:
        return None
    return Turn(human=human, reply=cited(hit[1], hit[0]), plugin=True,
                thoughts=_SEARCH["thought"][lang].format(q=command.arg),
                commands=protocol.render_commands([command]), results=results)


# What a Search turn's query is: the handbook page's title (what the from-scratch speedrun models learn,
# see above), or the question's own key terms (the handbook's `query` field), which a pretrained model
# copies from any phrasing; the snippet then leads with the sentence that holds those terms.
QUERY_KINDS = ("title", "terms")


def search_turn(question: dict, query: str = "title") -> Turn | None:
    """The question's Search turn, or None when its query does not find the answer."""
    if query not in QUERY_KINDS:
        raise ValueError(f"query is one of {QUERY_KINDS}, not {query!r}")
    docs, _ = handbook()
    return _search_turn(question["question"], question["lang"], docs[(question["topic"], question["lang"])],
                        question["answer"], question["query"] if query == "terms" else None)


@cache
def search_training_turns(lang: str, query: str = "title") -> tuple[Turn, ...]:
    """The Search turns of the handbook's training questions in one language, built once."""
    _, questions = handbook()
    turns = [search_turn(q, query) for q in questions if q["split"] == "train" and q["lang"] == lang]
    return tuple(t for t in turns if t is not None)


@cache
def handbook_sentences(lang: str) -> tuple[tuple[dict, str], ...]:
    """(document, sentence) for every sentence of the handbook in one language."""
    docs, _ = handbook()
    return tuple((d, s) for (_, lg), d in sorted(docs.items()) if lg == lang
                 for s in sentences(d["text"]) if len(s) > 8)


def _span(rng: random.Random, sentence: str, lang: str) -> str:
    """A clause of a sentence, or a stretch of one (4-14 characters, or 2-7 English words),
    starting at the clause's start half of the time."""
    clauses = [c.strip() for c in re.split(r"[，、；：,;:]", sentence.rstrip("。！？.!?")) if c.strip()]
    clause = rng.choice(clauses)
    units = list(clause) if lang == "zh" else clause.split()
    short, long = (4, 14) if lang == "zh" else (2, 7)
    if len(units) > long + 2:
        n = rng.randint(short, long)
        i = 0 if rng.random() < 0.5 else rng.randint(0, len(units) - n)
        units = units[i:i + n]
    return ("" if lang == "zh" else " ").join(units)


def span_search_turn(rng: random.Random, lang: str, named: bool = False, query: str = "title") -> Turn:
    """A question about a random span of a handbook sentence, naming the page's topic by an alias
    when `named` (so that the name in a question decides the page); the reply is that sentence, cited.
    The query is the page title, or with query="terms" the question's own words: the alias and the span."""
    if query not in QUERY_KINDS:
        raise ValueError(f"query is one of {QUERY_KINDS}, not {query!r}")
    while True:
        doc, sentence = rng.choice(handbook_sentences(lang))
        span = _span(rng, sentence, lang)
        if len(span) < 4:
            continue
        alias = None
        if named:
            if lang == "en" and span[1:2].islower():
                span = span[0].lower() + span[1:]
            frame = rng.choice(_SEARCH["named_frames"][lang])
            alias = rng.choice(doc["aliases"])
            human = frame.format(a=alias, s=span)
        else:
            human = rng.choice(_SEARCH["span_frames"][lang]).format(s=span)
        words = f"{alias} {span}" if named else span
        turn = _search_turn(human, lang, doc, span, words if query == "terms" else None)
        if turn is not None:
            return turn


def key_terms(question: str, lang: str = "en") -> str | None:
    """A question's key terms as a Search query (English: its words without the stop words), or None."""
    if lang != "en":
        return None
    stop = set(_SEARCH["query_stop_words"]["en"])
    words = [w for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'-]*", question) if w.lower() not in stop]
    return " ".join(words) or None


def unanswered_search_turn(question: str, reply: str, lang: str = "en", say_so: bool = False) -> Turn | None:
    """A question the handbook does not answer, searched anyway (its key terms as the query): the reply is
    `reply` (the base's own answer), uncited, whatever came back; with say_so it first says that the results
    do not answer (one early, explicit choice between citing and answering from memory). None when a snippet
    holds every key term, for then the handbook may answer it after all."""
    query = key_terms(question, lang)
    if query is None:
        return None
    command = Command("Search", query)
    results = run_commands([command], synth_plugins())
    terms = set(kb.index_terms(query))
    if any(terms <= set(kb.index_terms(text)) for _, text in _SNIPPET_RE.findall(results or "")):
        return None
    if say_so:
        reply = _SEARCH["unanswered"][lang].format(reply=reply)
    return Turn(human=question, reply=reply, plugin=True, thoughts=_SEARCH["thought"][lang].format(q=query),
                commands=protocol.render_commands([command]), results=results)


def search_conversation_turn(rng: random.Random, lang: str) -> Turn:
    draw = rng.random()
    if draw < NAMED_SHARE:
        return span_search_turn(rng, lang, named=True)
    if draw < NAMED_SHARE + SPAN_SHARE:
        return span_search_turn(rng, lang)
    return rng.choice(search_training_turns(lang))


def search_finds(query: str, item: dict, kb_file: Path | None = None) -> bool:
    """Whether a Search query brings the item's answer (from its own document) into the top 3."""
    results = run_commands([Command("Search", query)], {"Search": synth_plugins(kb_file)["Search"]})
    return gold_hit(results, {"topic": item["topic"], "lang": item["lang"], "answer": item["answer"]}) is not None


# ---------------------------------------------------------------- several commands in one turn

def _expr(rng: random.Random, heldout: bool = False) -> tuple[str, str]:
    """A calculation as the command writes it and as a person types it (37*91, 37×91)."""
    a, op, b = triple(rng, heldout=heldout, ops="+-*")
    return f"{a}{op}{b}", f"{a}{SHOWN[op]}{b}"


def multi_turn(rng: random.Random, lang: str) -> Turn:
    kind = rng.randrange(3)
    if kind == 0:  # two calculations
        t = _MULTI["two_calculations"]
        (e1, s1), (e2, s2) = _expr(rng), _expr(rng)
        human = rng.choice(t["questions"][lang]).format(a=s1, b=s2)
        reply = t["reply"][lang].format(a=s1, b=s2, ra=calculate(e1), rb=calculate(e2))
        return plugin_turn(human, t["thought"][lang].format(a=e1, b=e2),
                           [Command("Calculate", e1), Command("Calculate", e2)], lambda _: reply)
    if kind == 1:  # two equations
        t = _MULTI["two_equations"]
        q1, q2 = equation(rng, kinds="l"), equation(rng, kinds="lq")
        human = rng.choice(t["questions"][lang]).format(a=q1, b=q2)
        ra, rb = solution_text(solution_of(q1), lang), solution_text(solution_of(q2), lang)
        reply = t["reply"][lang].format(ra=ra, rb=rb)
        return plugin_turn(human, t["thought"][lang].format(a=q1, b=q2),
                           [Command("Solve", q1), Command("Solve", q2)], lambda _: reply)
    t = _MULTI["equation_and_calculation"]
    q, (e, s) = equation(rng, kinds="l"), _expr(rng)
    human = t["question"][lang].format(q=q, s=s)
    reply = t["reply"][lang].format(t=solution_text(solution_of(q), lang), s=s, r=calculate(e))
    return plugin_turn(human, t["thought"][lang].format(q=q, e=e),
                       [Command("Solve", q), Command("Calculate", e)], lambda _: reply)


# ---------------------------------------------------------------- eval items

def eval_items(rng: random.Random, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Held-out equations, the handbook's held-out questions, and two held-out calculations in one question."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    while sum(1 for i in items if i["task"] == "solve") < sizes["solve"]:
        lang = "zh" if len(items) % 2 == 0 else "en"
        eq = equation(rng, heldout=True)
        if eq in seen:
            continue
        seen.add(eq)
        items.append({"task": "solve", "lang": lang, "question": solve_question(rng, eq, lang, heldout=rng.random() < 0.3),
                      "expr": eq, "expected": solution_of(eq)})
    _, questions = handbook()
    held = [q for q in questions if q["split"] == "heldout"]
    for q in rng.sample(held, min(sizes["search"], len(held))):
        items.append({"task": "search", "lang": q["lang"], "question": q["question"], "topic": q["topic"],
                      "answer": q["answer"], "expected": q["answer"]})
    for _ in range(sizes["multi"]):
        lang = "zh" if len(items) % 2 == 0 else "en"
        (e1, s1), (e2, s2) = _expr(rng, heldout=True), _expr(rng, heldout=True)
        items.append({"task": "multi", "lang": lang, "question": _MULTI["eval_question"][lang].format(a=s1, b=s2),
                      "exprs": [e1, e2], "expected": [calculate(e1), calculate(e2)]})
    return items
