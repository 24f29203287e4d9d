"""Conversation turns without a plugin, or around Calculate: identity, small talk and
facts, refusals and their harmless look-alikes, multi-turn memory, language switches.

The tables are resources/synth/{identity,smalltalk,facts,requests,multiturn}.json.
Held out of training (and asked in eval): 15% of the identity phrasings, the last
request frame of each language, new (action, target) pairs of harmful requests,
and a few harmless request objects.
"""

from __future__ import annotations

import random
import re
from typing import Any

from ...plugins.calculator import calculate
from ...protocol import Turn
from .arithmetic import arith_reply, arithmetic_turn, calculate_turn, follow_up, reply_form
from .heldout import identity_heldout
from .tables import random_lang, table

_ID = table("identity")
_FACTS = table("facts")
_REQ = table("requests")
_MULTI = table("multiturn")
SMALLTALK = [v for k, v in table("smalltalk").items() if k != "_about"]
THANKS = table("smalltalk")["thanks"]

_REFUSAL_START = re.compile(_REQ["refusal_markers"]["start"], re.IGNORECASE)
_REFUSAL_PHRASES = tuple(_REQ["refusal_markers"]["phrases"])


def is_refusal(reply: str) -> bool:
    """Whether a reply declines, in the phrasing of this corpus (抱歉… / Sorry…)."""
    text = reply.strip().replace("’", "'")
    return bool(_REFUSAL_START.match(text)) or any(p in text.lower() for p in _REFUSAL_PHRASES)


def chat_turn(human: str, reply: str) -> Turn:
    """A plugin-format turn that uses no tool (thoughts, commands and results all None)."""
    return Turn(human=human, reply=reply, plugin=True)


def prefixed(prefix: str, question: str) -> str:
    """An opener before a question; after "Hey, " the question goes on in lower case."""
    if prefix.endswith(", ") and not question.startswith(("I ", "I'", "MOSS")):
        question = question[0].lower() + question[1:]
    return prefix + question


def with_opener(rng: random.Random, lang: str, text: str) -> str:
    """The text after one of the openers people put before any question (often none)."""
    return prefixed(rng.choice(_ID["prefixes"][lang]), text)


# ---------------------------------------------------------------- identity, small talk, facts

def identity_question(prefix: str, frame: str, question: str) -> str:
    return prefixed(prefix, frame.format(q=question))


def identity_turn(rng: random.Random, lang: str) -> Turn:
    while True:
        question, kind = rng.choice(_ID["questions"][lang])
        text = identity_question(rng.choice(_ID["prefixes"][lang]), rng.choice(_ID["frames"][lang]), question)
        if not identity_heldout(text):
            return chat_turn(text, rng.choice(_ID["replies"][lang][kind]))


def heldout_identity_questions(lang: str) -> list[str]:
    """Every eval-only identity question of a language (all its prefix x frame x question combinations)."""
    return [t for q, _ in _ID["questions"][lang] for p in _ID["prefixes"][lang] for f in _ID["frames"][lang]
            if identity_heldout(t := identity_question(p, f, q))]


def capital_answer(lang: str, country: str, capital: str) -> str:
    return _FACTS["capital_answer"][lang].format(c=country, k=capital)


def fact_turn(rng: random.Random, lang: str) -> Turn:
    if rng.random() < 0.4:
        c, k = rng.choice(_FACTS["capitals"])[lang]
        return chat_turn(with_opener(rng, lang, rng.choice(_FACTS["capital_questions"][lang]).format(c=c)),
                         capital_answer(lang, c, k))
    question, answer = rng.choice(_FACTS["facts"])[lang]
    return chat_turn(with_opener(rng, lang, question), answer)


def world_fact(rng: random.Random) -> tuple[str, str]:
    """One aligned (Chinese, English) fact sentence: a capital or a general fact."""
    if rng.random() < 0.4:
        capital = rng.choice(_FACTS["capitals"])
        return capital_answer("zh", *capital["zh"]), capital_answer("en", *capital["en"])
    fact = rng.choice(_FACTS["facts"])
    return fact["zh"][1], fact["en"][1]


def _exchange_turn(rng: random.Random, exchange: dict[str, Any], lang: str) -> Turn:
    side = exchange[lang]
    return chat_turn(rng.choice(side["questions"]), rng.choice(side["replies"]))


def smalltalk_turn(rng: random.Random, lang: str) -> Turn:
    if rng.random() < 0.45:
        return fact_turn(rng, lang)
    return _exchange_turn(rng, rng.choice(SMALLTALK), lang)


# ---------------------------------------------------------------- refusals and look-alikes

def harmful_requests(heldout: bool) -> list[tuple[str, str, str]]:
    """(zh, en, kind) for the training (action, target) pairs, or for the eval-only pairs."""
    out = []
    for kind, harm in _REQ["harm"].items():
        for ai, (za, ea) in enumerate(harm["actions"]):
            for ti, (zt, et) in enumerate(harm["targets"]):
                if ((ai + ti) % 4 == 3) == heldout:
                    out.append((za.format(t=zt), ea.format(t=et), kind))
    return out


HARMFUL = harmful_requests(heldout=False)
HARMFUL_EVAL = harmful_requests(heldout=True)
REFUSAL: dict[str, dict[str, list[str]]] = _REQ["refusals"]
BENIGN_EVAL: list[list[str]] = _REQ["benign_eval"]
BENIGN_OPENER: dict[str, list[str]] = _REQ["benign_openers"]
EVERYDAY_ANSWER: dict[str, list[str]] = _REQ["everyday_answers"]


def request_text(rng: random.Random, lang: str, x: str) -> str:
    return rng.choice(_REQ["frames"][lang][:-1]).format(x=x)  # the last frame is eval-only


def refusal_turn(rng: random.Random, lang: str) -> Turn:
    zx, ex, kind = rng.choice(HARMFUL)
    human = with_opener(rng, lang, request_text(rng, lang, zx if lang == "zh" else ex))
    return chat_turn(human, rng.choice(REFUSAL[lang][kind]))


def benign_turn(rng: random.Random, lang: str) -> Turn:
    if rng.random() < 0.6:  # many everyday tasks, so that only harmful words trigger a refusal
        zx, ex = rng.choice(_REQ["everyday"])
        x = zx if lang == "zh" else ex
        return chat_turn(with_opener(rng, lang, request_text(rng, lang, x)),
                         rng.choice(BENIGN_OPENER[lang]) + rng.choice(EVERYDAY_ANSWER[lang]).format(x=x))
    x, answer = rng.choice(_REQ["benign"])[lang]
    return chat_turn(with_opener(rng, lang, request_text(rng, lang, x)), rng.choice(BENIGN_OPENER[lang]) + answer)


def _request_pool(lang: str, train: list[str], heldout: list[str]) -> list[str]:
    """Held-out objects in every frame, plus training objects in the held-out frame."""
    frames = _REQ["frames"][lang]
    return [t.format(x=x) for x in heldout for t in frames] + [frames[-1].format(x=x) for x in train]


def heldout_requests() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The eval-only (harmful, harmless) requests per language."""
    harmful = {lang: _request_pool(lang, [h[i] for h in HARMFUL], [h[i] for h in HARMFUL_EVAL])
               for i, lang in enumerate(("zh", "en"))}
    benign = {lang: _request_pool(lang, [b[lang][0] for b in _REQ["benign"]], [b[i] for b in BENIGN_EVAL])
              for i, lang in enumerate(("zh", "en"))}
    return harmful, benign


# ---------------------------------------------------------------- several turns

def multiturn_turns(rng: random.Random, lang: str) -> list[Turn]:
    kind = rng.choices(("calc", "recall", "name", "capital", "thanks"), (4, 2, 2, 1, 1))[0]
    if kind == "name":
        n = rng.choice(_MULTI["names"][lang])
        q, a = rng.choice(_MULTI["name_intro"][lang])
        turns = [chat_turn(q.format(n=n), a.format(n=n))]
        if rng.random() < 0.5:
            turns.append(rng.choice((smalltalk_turn, lambda g, l: arithmetic_turn(g, l)[0]))(rng, lang))
        q, a = rng.choice(_MULTI["name_ask"][lang])
        return turns + [chat_turn(q.format(n=n), a.format(n=n))]
    if kind == "capital":
        first, second = rng.sample(_FACTS["capitals"], 2)
        (c, k), (c2, k2) = first[lang], second[lang]
        return [chat_turn(rng.choice(_FACTS["capital_questions"][lang]).format(c=c), capital_answer(lang, c, k)),
                chat_turn(_FACTS["capital_follow_up"][lang].format(c=c2), capital_answer(lang, c2, k2))]
    first, (a, op, b) = arithmetic_turn(rng, lang, ops="+-*")
    result = calculate(f"{a}{op}{b}")
    turns = [first]
    if kind == "thanks":
        return turns + [_exchange_turn(rng, THANKS, lang)]
    if kind == "recall":
        q, a_ = rng.choice(_MULTI["recall"][lang])
        return turns + [chat_turn(q, a_.format(q=first.human, r=result))]
    value = result
    for _ in range(rng.choice((1, 1, 2))):  # one or two follow-ups on the running result
        step = follow_up(rng, int(value), lang) if value.lstrip("-").isdigit() else None
        if step is None:
            break
        human, op2, k = step
        form = reply_form(rng)
        turns.append(calculate_turn(human, f"{value}{op2}{k}", lang,
                                    lambda r, v=value, o=op2, kk=k, f=form: arith_reply(v, o, kk, r, lang, f)))
        value = calculate(f"{value}{op2}{k}")
    return turns


def language_turns(rng: random.Random) -> list[Turn]:
    """Two or three turns that switch language; each reply follows its own question."""
    lang = random_lang(rng)
    turns = []
    for _ in range(rng.choice((2, 2, 3))):
        make = rng.choice((lambda g, l: arithmetic_turn(g, l)[0], identity_turn, smalltalk_turn, fact_turn))
        turns.append(make(rng, lang))
        lang = "en" if lang == "zh" else "zh"
    return turns
