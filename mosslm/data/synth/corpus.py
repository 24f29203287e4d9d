"""The speedrun corpus: what each recipe teaches, and `generate_corpus`, which writes it.

`generate_corpus` is a pure function of (seed, scale, recipe): the same
arguments give byte-identical files (tests/test_synth_identical.py holds their
hashes). Each file draws from its own random stream, so adding a category to
one file leaves the others unchanged.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import protocol
from ...paths import atomic_file
from ...protocol import Conversation, Turn
from . import arithmetic, chat, plugins
from .heldout import HELDOUT_PERMILLE
from .pretrain import pretrain_docs
from .tables import random_lang

# ---------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """What a corpus teaches: its plugins and the mix of pretraining and SFT data."""

    plugins: tuple[str, ...]
    sft_train: int
    sft_shares: dict[str, float]
    pretrain_shares: dict[str, float]
    eval_sizes: dict[str, tuple[int, int]]  # task -> (items at scale 1, minimum)

    @property
    def meta(self) -> str:
        return protocol.meta_instruction("mosslm", list(self.plugins))


_EVAL_BASE = {"arithmetic": (100, 10), "identity": (40, 8), "refusal": (40, 8), "benign": (40, 8)}
RECIPES = {
    # The default speedrun's corpus: the Calculate plugin (the numbers in the speedrun report).
    "calculate": Recipe(
        ("Calculate",), 6000,
        {"arithmetic": 0.30, "identity": 0.15, "smalltalk": 0.11, "multiturn": 0.08,
         "refusal": 0.15, "benign": 0.16, "language": 0.05},
        {"arithmetic": 0.25, "facts": 0.20, "descriptions": 0.10, "daily": 0.20, "code": 0.10, "bilingual": 0.15},
        _EVAL_BASE),
    # All three text plugins: Solve, Search over the bundled handbook, two commands in one turn.
    "plugins": Recipe(
        ("Search", "Calculate", "Solve"), 10000,
        {"arithmetic": 0.14, "identity": 0.07, "smalltalk": 0.07, "multiturn": 0.05, "refusal": 0.10,
         "benign": 0.11, "language": 0.04, "solve": 0.13, "search": 0.26, "multi": 0.03},
        {"arithmetic": 0.22, "facts": 0.12, "descriptions": 0.09, "daily": 0.18, "code": 0.09, "bilingual": 0.13,
         "handbook": 0.06, "equations": 0.06, "echo": 0.05},
        {**_EVAL_BASE, "solve": (60, 8), "search": (60, 8), "multi": (20, 4)}),
}
VAL_FRACTION = 0.03
PRETRAIN_DOCS = 3000

# ---------------------------------------------------------------- SFT conversations

CATEGORY_MAKERS: dict[str, Callable[[random.Random], list[Turn]]] = {
    "arithmetic": lambda rng: [arithmetic.arithmetic_turn(rng, random_lang(rng))[0]],
    "identity": lambda rng: [chat.identity_turn(rng, random_lang(rng))],
    "smalltalk": lambda rng: [chat.smalltalk_turn(rng, random_lang(rng))],
    "multiturn": lambda rng: chat.multiturn_turns(rng, random_lang(rng)),
    "refusal": lambda rng: [chat.refusal_turn(rng, random_lang(rng))],
    "benign": lambda rng: [chat.benign_turn(rng, random_lang(rng))],
    "language": chat.language_turns,
    "solve": lambda rng: [plugins.solve_turn(rng, random_lang(rng))],
    "search": lambda rng: [plugins.search_conversation_turn(rng, random_lang(rng))],
    "multi": lambda rng: [plugins.multi_turn(rng, random_lang(rng))],
}


def sft_conversations(rng: random.Random, counts: dict[str, int], prefix: str, meta: str) -> list[Conversation]:
    convs = []
    for category, n in counts.items():
        for _ in range(n):
            convs.append(Conversation(meta, CATEGORY_MAKERS[category](rng), extra={"category": category}))
    rng.shuffle(convs)
    for i, conv in enumerate(convs):
        conv.id = f"{prefix}-{i:05d}"
    return convs


# ---------------------------------------------------------------- eval items

def _balanced(rng: random.Random, task: str, pools: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
    items = []
    for lang, k in (("zh", (n + 1) // 2), ("en", n // 2)):
        pool = sorted(set(pools[lang]))
        for question in rng.sample(pool, min(k, len(pool))):
            items.append({"task": task, "lang": lang, "question": question, "expected": None})
    return items


def eval_items(rng: random.Random, sizes: dict[str, int]) -> list[dict[str, Any]]:
    identity = {lang: chat.heldout_identity_questions(lang) for lang in ("zh", "en")}
    refusal, benign = chat.heldout_requests()
    items = arithmetic.eval_items(rng, sizes["arithmetic"])
    items += _balanced(rng, "identity", identity, sizes["identity"])
    items += _balanced(rng, "refusal", refusal, sizes["refusal"])
    items += _balanced(rng, "benign", benign, sizes["benign"])
    if any(sizes.get(task) for task in ("solve", "search", "multi")):
        items += plugins.eval_items(rng, sizes)
    for i, item in enumerate(items):
        item["id"] = f"{item['task']}-{i:04d}"
    return items


# ---------------------------------------------------------------- writing

def _counts(total: int, shares: dict[str, float], scale: float, minimum: int = 1) -> dict[str, int]:
    return {k: max(minimum, round(total * share * scale)) for k, share in shares.items()}


def _write_lines(path: Path, lines: list[str]) -> int:
    """Write lines atomically (temp file, then rename); returns the byte size."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with atomic_file(path, "wb") as f:
        f.write(data)
    return len(data)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _sft_manifest(convs: list[Conversation], size: int) -> dict[str, Any]:
    return {"records": len(convs), "turns": sum(len(c.turns) for c in convs), "bytes": size,
            "categories": dict(sorted(Counter(c.extra["category"] for c in convs).items()))}


def _stream(seed: int, name: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so streams are stable across runs.
    return random.Random(f"mosslm-synth:{seed}:{name}")


def generate_corpus(out_dir: str | Path, seed: int = 0, scale: float = 1.0, recipe: str = "calculate") -> dict:
    """Write pretrain.jsonl, sft_train.jsonl, sft_val.jsonl, eval.jsonl and manifest.json."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    r = RECIPES[recipe]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    pre_counts = _counts(PRETRAIN_DOCS, r.pretrain_shares, scale, minimum=5)
    docs = pretrain_docs(_stream(seed, "pretrain"), pre_counts)
    pre_size = _write_lines(out / "pretrain.jsonl", [_dumps({"text": d}) for d in docs])

    train_counts = _counts(r.sft_train, r.sft_shares, scale)
    val_counts = {k: max(1, round(n * VAL_FRACTION)) for k, n in train_counts.items()}
    files: dict[str, Any] = {"pretrain.jsonl": {"records": len(docs), "bytes": pre_size, "kinds": pre_counts}}
    for name, counts, prefix in (("sft_train.jsonl", train_counts, "train"), ("sft_val.jsonl", val_counts, "val")):
        convs = sft_conversations(_stream(seed, prefix), counts, f"synth-{prefix}", r.meta)
        size = _write_lines(out / name, [_dumps(protocol.to_moss_json(c)) for c in convs])
        files[name] = _sft_manifest(convs, size)

    sizes = {task: max(low, round(n * scale)) for task, (n, low) in r.eval_sizes.items()}
    items = eval_items(_stream(seed, "eval"), sizes)
    size = _write_lines(out / "eval.jsonl", [_dumps(i) for i in items])
    files["eval.jsonl"] = {"records": len(items), "bytes": size,
                           "tasks": dict(sorted(Counter(i["task"] for i in items).items()))}

    manifest = {"generator": "mosslm.data.synth", "version": 1, "seed": seed, "scale": scale, "recipe": recipe,
                "meta_instruction": "mosslm", "plugins": list(r.plugins),
                "heldout_arithmetic_fraction": HELDOUT_PERMILLE / 1000, "files": files}
    _write_lines(out / "manifest.json", [json.dumps(manifest, ensure_ascii=False, indent=2)])
    return manifest
