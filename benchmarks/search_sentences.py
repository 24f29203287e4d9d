"""Where the Search reply's fact could come from: for every held-out handbook question, whether the results hold
the answer's passage, and whether the result sentence that shares the most terms with the question holds the
answer (no model involved). Two queries: the page title (what the plugins data teaches) and the question's own
key terms (the handbook's `query` field).

    python benchmarks/search_sentences.py

It measures how much of the Search item of issue 15 retrieval could carry: the fine-tuned SmolLM2 cites a
sentence of the right page, but mostly not the one that answers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosslm.data.synth import plugins as sp  # noqa: E402
from mosslm.plugins.registry import run_commands  # noqa: E402
from mosslm.protocol import Command  # noqa: E402

STOP_EN = {"the", "a", "of", "is", "what", "how", "in", "to", "and", "did", "does", "do", "me", "tell", "i", "which",
           "when", "for", "on", "by", "it"}


def units(text: str, lang: str) -> set[str]:
    """Character bigrams for Chinese, words without stop words for English."""
    text = text.lower()
    if lang == "zh":
        chars = re.findall(r"[\u4e00-\u9fff0-9a-z]", text)
        return {a + b for a, b in zip(chars, chars[1:])}
    return set(re.findall(r"[a-z0-9]+", text)) - STOP_EN


def main() -> int:
    docs, questions = sp.handbook()
    held = [q for q in questions if q["split"] == "heldout"]
    search = {"Search": sp.synth_plugins()["Search"]}
    print("| query | lang | questions | answer's passage in the results | best-overlap sentence holds the answer |")
    print("|---|---|---|---|---|")
    for mode in ("title", "question terms"):
        for lang in ("zh", "en"):
            asked = [q for q in held if q["lang"] == lang]
            found = picked = 0
            for q in asked:
                query = docs[(q["topic"], lang)]["title"] if mode == "title" else q["query"]
                results = run_commands([Command("Search", query)], search)
                if sp.gold_hit(results, q) is None:
                    continue
                found += 1
                sentences = [s.strip() for _, text in sp._SNIPPET_RE.findall(results)
                             for s in sp._SENTENCE_RE.findall(text) if s.strip()]
                terms = units(q["question"], lang)
                best = max(sentences, key=lambda s: len(units(s, lang) & terms))
                picked += q["answer"] in best
            print(f"| {mode} | {lang} | {len(asked)} | {found / len(asked):.0%} | {picked / len(asked):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
