"""Training conversations that teach a model a company's own tool.

Input: a plugin file (the same `--plugin-path FILE.py` the agent loads, read
through the registry) and example questions (.txt, one per line, or .jsonl
records {"question", "argument"?, "answer"?, "tool"?, "negative"?, "lang"?}).
Output: MOSS conversations (.jsonl, written atomically) whose Results are what
the real tool returns, plus contrast turns that answer directly with
`Commands: None`, and held-out eval items for measuring tool choice.

The argument of a command: the record's "argument"; else the plugin file's
`argument_for(question) -> str | None`; else the first match of its
`ARGUMENT_PATTERN` regex (group 1 when it has one). A question with none of
these is an error naming its file and line.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import protocol
from ...paths import atomic_file
from ...plugins.registry import Plugin, PluginError, load_file
from ...protocol import Command, Conversation, Turn
from ..text import language_of
from .arithmetic import arithmetic_turn
from .chat import benign_turn, fact_turn, heldout_identity_questions, identity_turn, prefixed, smalltalk_turn
from .plugins import solve_turn
from .tables import table


class ToolDataError(ValueError):
    """Bad input to the tool-data generator; the message names the file (and line)."""


@dataclass
class Question:
    text: str
    where: str                    # "file:line", for error messages
    tool: str | None              # None: a negative (answer directly, no command)
    argument: str | None = None
    answer: str | None = None     # a reply template ({result}, {argument}) or a negative's reply
    lang: str = "en"


_T = table("tools")
PREFIXES: dict[str, list[str]] = _T["prefixes"]  # before a question, for its variants
THOUGHTS: dict[str, list[str]] = _T["thoughts"]
REPLIES: dict[str, list[str]] = _T["replies"]
FAILED: dict[str, list[str]] = _T["failed"]  # the reply when the tool gave no result
RULE_HINT = "give \"argument\" in the record, or define argument_for(question) or ARGUMENT_PATTERN in the plugin file"


# ---------------------------------------------------------------- inputs

def load_tools(plugin_file: str | Path, names: list[str] | None = None) -> list[Plugin]:
    """The plugins a file defines, loaded exactly as `--plugin-path` loads them."""
    try:
        found = load_file(plugin_file)
    except PluginError as e:
        raise ToolDataError(str(e)) from None
    if names:
        by_name = {p.name: p for p in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ToolDataError(f"{plugin_file}: no plugin named {', '.join(missing)}; it defines "
                                f"{', '.join(by_name)}")
        found = [by_name[n] for n in names]
    return found


def argument_rule(plugin: Plugin) -> Callable[[str], str | None] | None:
    """The plugin file's argument rule, found in the module its run function lives in.

    The registry returns only the Plugin objects; the run function's globals
    are that module's namespace, so the file is not executed a second time.
    """
    namespace = getattr(plugin.run, "__globals__", {})
    rule = namespace.get("argument_for")
    if callable(rule):
        return rule
    pattern = namespace.get("ARGUMENT_PATTERN")
    if isinstance(pattern, str):
        regex = re.compile(pattern)

        def by_pattern(question: str) -> str | None:
            m = regex.search(question)
            return None if m is None else (m.group(1) if regex.groups else m.group(0))
        return by_pattern
    return None


def read_questions(path: str | Path, tools: list[Plugin]) -> list[Question]:
    p = Path(path)
    if not p.is_file():
        raise ToolDataError(f"questions file not found: {p}")
    if p.suffix not in (".txt", ".jsonl"):
        raise ToolDataError(f"{p}: questions must be a .txt (one per line) or .jsonl file")
    names = [t.name for t in tools]
    questions = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or (p.suffix == ".txt" and line.lstrip().startswith("#")):
            continue
        where = f"{p}:{n}"
        if p.suffix == ".txt":
            record: dict[str, Any] = {"question": line.strip()}
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ToolDataError(f"{where}: not valid JSON: {e}") from None
            if not isinstance(record, dict):
                raise ToolDataError(f"{where}: each line must be a JSON object")
        questions.append(_question(record, where, names))
    if not questions:
        raise ToolDataError(f"{p}: no questions (the file is empty)")
    return questions


def _question(record: dict, where: str, names: list[str]) -> Question:
    text = record.get("question")
    if not isinstance(text, str) or not text.strip():
        raise ToolDataError(f"{where}: needs a non-empty string 'question'")
    for key in ("argument", "answer", "tool", "lang"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ToolDataError(f"{where}: '{key}' must be a string")
    lang = record.get("lang") or language_of(text)
    if lang not in ("zh", "en"):
        raise ToolDataError(f"{where}: 'lang' must be zh or en")
    if record.get("negative"):
        if not record.get("answer"):
            raise ToolDataError(f"{where}: a negative question needs the direct 'answer'")
        return Question(text.strip(), where, None, answer=record["answer"], lang=lang)
    tool = record.get("tool") or (names[0] if len(names) == 1 else None)
    if tool is None:
        raise ToolDataError(f"{where}: the plugin file defines several tools ({', '.join(names)}); name one in 'tool'")
    if tool not in names:
        raise ToolDataError(f"{where}: unknown tool {tool!r}; the plugin file defines {', '.join(names)}")
    return Question(text.strip(), where, tool, record.get("argument"), record.get("answer"), lang)


def resolve_argument(q: Question, plugin: Plugin) -> str:
    arg = q.argument
    if arg is None:
        rule = argument_rule(plugin)
        if rule is None:
            raise ToolDataError(f"{q.where}: no argument for {q.text!r}: {RULE_HINT}")
        arg = rule(q.text)
        if not arg:
            raise ToolDataError(f"{q.where}: the plugin file's rule found no argument in {q.text!r}; {RULE_HINT}")
    arg = str(arg).strip()
    # The production grammar reads Name("arg") up to the first `")`: such an argument cannot round-trip.
    if not arg or '")' in arg or "\n" in arg or protocol.contains_protected(arg):
        raise ToolDataError(f"{q.where}: the argument {arg!r} cannot be written in a command "
                            "(empty, a newline, '\")' or a protocol tag)")
    return arg


# ---------------------------------------------------------------- running the tool

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="moss-tool-synth")


def run_tool(plugin: Plugin, arg: str) -> tuple[str | None, str]:
    """(value, Results block) as the agent gets them: a raise, a timeout or a block that
    cannot be built (e.g. a non-string result) all give the protocol's `No result.`."""
    command = Command(plugin.name, arg)
    try:
        value = _pool.submit(plugin.run, arg).result(timeout=plugin.timeout)
        return value, plugin.block(command, value)
    except FutureTimeout:
        return None, plugin.block(command, None)
    except Exception:  # noqa: BLE001 -- the agent turns any tool failure into no result; so does its training data
        return None, plugin.block(command, None)


# ---------------------------------------------------------------- turns

def tool_turn(rng: random.Random, q: Question, plugin: Plugin, arg: str, value: str | None, block: str,
              human: str) -> Turn:
    slots = {"name": plugin.name, "label": plugin.label or plugin.name, "arg": arg}
    ok = value is not None and str(value).strip() != ""
    if not ok:
        reply = rng.choice(FAILED[q.lang]).format(**slots)
    elif q.answer:
        reply = q.answer.replace("{result}", str(value)).replace("{argument}", arg)
    else:
        reply = rng.choice(REPLIES[q.lang]).format(result=value, **slots)
    return Turn(human=protocol.escape(human), reply=reply, plugin=True,
                thoughts=rng.choice(THOUGHTS[q.lang]).format(**slots),
                commands=protocol.render_commands([Command(plugin.name, arg)]), results=block)


def negative_turn(rng: random.Random, builtins: list[str]) -> Turn:
    """A question this tool must not answer: small talk, facts, identity, or a built-in's own job."""
    lang = rng.choice(("zh", "en"))
    makers: list[Callable[[random.Random, str], Turn]] = [smalltalk_turn, fact_turn, identity_turn, benign_turn]
    if "Calculate" in builtins:
        makers.append(lambda g, lg: arithmetic_turn(g, lg)[0])
    if "Solve" in builtins:
        makers.append(solve_turn)
    return rng.choice(makers)(rng, lang)


def _with_prefix(rng: random.Random, text: str, lang: str, used: set[str]) -> str:
    for prefix in rng.sample(PREFIXES[lang], len(PREFIXES[lang])):
        human = prefixed(prefix, text)
        if human not in used:
            return human
    return text


def _heldout(questions: list[Question], fraction: float) -> set[int]:
    """Indices held out: the lowest hashes, so the share is exact even for 30 questions."""
    if fraction <= 0 or len(questions) < 2:
        return set()
    k = min(len(questions) - 1, max(1, round(len(questions) * fraction)))
    order = sorted(range(len(questions)), key=lambda i: hashlib.sha256(questions[i].text.encode()).hexdigest())
    return set(order[:k])


# ---------------------------------------------------------------- the generator

def tool_conversations(plugin_file: str | Path, questions_file: str | Path, out: str | Path, seed: int = 0,
                       builtins: list[str] = (), tools: list[str] | None = None, variants: int = 3,
                       negative_share: float = 0.3, eval_fraction: float = 0.1, preset: str = "mosslm",
                       eval_out: str | Path | None = None) -> dict[str, Any]:
    """Write the conversations to `out` and the eval items beside it; returns a summary."""
    if variants < 1:
        raise ToolDataError("variants must be >= 1")
    if not 0 <= negative_share < 1 or not 0 <= eval_fraction < 1:
        raise ToolDataError("negative_share and eval_fraction must be in [0, 1)")
    plugins = load_tools(plugin_file, tools)
    by_name = {p.name: p for p in plugins}
    # As Agent.meta: a tool named like a built-in takes the built-in's capability line.
    enabled = list(dict.fromkeys([*builtins, *[n for n in by_name if n in protocol.PLUGINS]]))
    try:
        meta = protocol.meta_instruction(preset, plugins=enabled,
                                         custom=[p.capability for p in plugins if p.name not in protocol.PLUGINS])
    except protocol.ProtocolError as e:
        raise ToolDataError(str(e)) from None
    questions = read_questions(questions_file, plugins)
    positives = [(q, resolve_argument(q, by_name[q.tool])) for q in questions if q.tool]
    arguments = dict(zip((id(q) for q, _ in positives), (a for _, a in positives)))
    results = {(n, a): run_tool(by_name[n], a) for n, a in dict.fromkeys((q.tool, a) for q, a in positives)}
    held = _heldout(questions, eval_fraction)
    rng = random.Random(f"mosslm-tools:{seed}")

    convs: list[Conversation] = []
    items: list[dict[str, Any]] = []
    for i, q in enumerate(questions):
        plugin = by_name.get(q.tool) if q.tool else None
        arg = arguments.get(id(q))
        value, block = results[(q.tool, arg)] if plugin else (None, None)
        if i in held:
            items.append({"task": "tool" if plugin else "no_tool", "lang": q.lang, "question": q.text,
                          "tool": q.tool, "argument": arg, "expected": value if plugin else None})
            continue
        used: set[str] = set()
        for v in range(variants):
            human = q.text if v == 0 else _with_prefix(rng, q.text, q.lang, used)
            if human in used:
                continue
            used.add(human)
            if plugin:
                turns = [tool_turn(rng, q, plugin, arg, value, block, human)]
                category = "tool" if value is not None else "tool_failed"
            else:
                turns, category = [Turn(human=protocol.escape(human), reply=q.answer, plugin=True)], "negative"
            if plugin and rng.random() < 0.2:  # the tool after an unrelated turn: choice in context
                turns.insert(0, negative_turn(rng, list(builtins)))
            convs.append(Conversation(meta, turns, extra={"category": category}))
    n_negative = round(len(convs) * negative_share / (1 - negative_share)) if convs else 0
    convs += [Conversation(meta, [negative_turn(rng, list(builtins))], extra={"category": "negative"})
              for _ in range(n_negative)]
    items += _identity_items(rng, max(2, len(items)))
    rng.shuffle(convs)
    for n, conv in enumerate(convs):
        conv.id = f"tool-{n:05d}"
    for n, item in enumerate(items):
        item["id"] = f"{item['task']}-{n:04d}"

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eval_path = Path(eval_out) if eval_out else out.with_name(out.stem + ".eval.jsonl")
    with atomic_file(out) as f:
        f.writelines(json.dumps(protocol.to_moss_json(c), ensure_ascii=False) + "\n" for c in convs)
    with atomic_file(eval_path) as f:
        f.writelines(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
    counts: dict[str, int] = {}
    for c in convs:
        counts[c.extra["category"]] = counts.get(c.extra["category"], 0) + 1
    return {"out": str(out), "eval": str(eval_path), "conversations": len(convs), "categories": counts,
            "eval_items": len(items), "plugins": enabled + [p.name for p in plugins if p.name not in enabled],
            "meta_instruction": meta}


def _identity_items(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Unseen identity questions (synth's held-out phrasings): the tool must stay unused."""
    pool = heldout_identity_questions("zh") + heldout_identity_questions("en")
    picked = rng.sample(sorted(set(pool)), min(n, len(set(pool))))
    return [{"task": "no_tool", "lang": language_of(t), "question": t, "tool": None, "argument": None,
             "expected": None} for t in picked]


def score_tool_item(item: dict[str, Any], turn: Turn) -> dict[str, bool]:
    """Eval metrics of one item (for the quick eval): the right call, or rightly none."""
    commands = protocol.parse_commands(turn.commands or "")
    if item["task"] == "no_tool":
        return {"no_tool_call": not commands}
    right = len(commands) == 1 and commands[0].name == item["tool"] and commands[0].arg == item["argument"]
    expected = item.get("expected")
    return {"tool_call_correct": right, "answer_uses_result": bool(expected) and expected in (turn.reply or "")}


# ---------------------------------------------------------------- CLI

def synth_tool_data(args: Any) -> int:
    """`moss data synth --recipe tool`: see docs/custom-tools.md."""
    import sys

    builtins = [p.strip() for p in (args.plugins or "").split(",") if p.strip()]
    try:
        summary = tool_conversations(args.plugin_file, args.questions, args.out, seed=args.seed,
                                     builtins=builtins, variants=args.variants,
                                     negative_share=args.negative_share, eval_fraction=args.eval_fraction,
                                     preset=args.preset)
    except ToolDataError as e:
        print(f"moss data synth: {e}", file=sys.stderr)
        return 2
    detail = ", ".join(f"{k} {v}" for k, v in sorted(summary["categories"].items()))
    print(f"{summary['out']}: {summary['conversations']} conversations ({detail})")
    print(f"{summary['eval']}: {summary['eval_items']} eval items")
    print(f"train with plugins={','.join(summary['plugins'])} protocol={args.preset}")
    return 0
