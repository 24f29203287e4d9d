"""The corpus's hand-written text: JSON tables in mosslm/resources/synth/, one file per topic.

Every sentence there was written for mosslm. A table is a plain structure of
lists and objects keyed by language ("zh", "en"); aligned pairs are [zh, en].
Each file's "_about" says what its placeholders ({a}, {x}, ...) stand for.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path
from typing import Any

TABLES = Path(__file__).resolve().parents[2] / "resources" / "synth"
LANGS = ("zh", "en")


@cache
def table(name: str) -> dict[str, Any]:
    """resources/synth/<name>.json, read once per process (callers must not change it)."""
    path = TABLES / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path}: the synthetic corpus's table is missing or broken: {e}") from None


def random_lang(rng: random.Random) -> str:
    """The language of the next turn or document: Chinese and English in equal shares."""
    return rng.choice(LANGS)
