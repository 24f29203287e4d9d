"""Where the Search reply's fact could come from: for every held-out handbook question, whether the results hold
the answer's passage, and whether the first result's leading sentence holds the answer (the knowledge base's
snippets are query-focused: their sentences ordered by the query terms they hold). No model involved. Three
queries: the page title (what the speedrun's plugins data teaches), the question's key terms (the handbook's
`query` field, what benchmarks/finetune_plugins.py teaches a pretrained model) and the whole question.

    python benchmarks/search_sentences.py

It measures how much of the Search item of issue 15 retrieval carries: a model that writes the question's key
terms and cites the first sentence of the first result can reach the last column.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosslm.data.synth import plugins as sp  # noqa: E402
from mosslm.plugins.registry import run_commands  # noqa: E402
from mosslm.protocol import Command  # noqa: E402


def main() -> int:
    docs, questions = sp.handbook()
    held = [q for q in questions if q["split"] == "heldout"]
    search = {"Search": sp.synth_plugins()["Search"]}
    print("| query | lang | questions | answer's passage in the results | first result's leading sentence holds it |")
    print("|---|---|---|---|---|")
    for mode in ("title", "question's key terms", "whole question"):
        for lang in ("zh", "en"):
            asked = [q for q in held if q["lang"] == lang]
            found = leading = 0
            for q in asked:
                query = {"title": docs[(q["topic"], lang)]["title"], "whole question": q["question"]}.get(mode, q["query"])
                results = run_commands([Command("Search", query)], search)
                found += sp.gold_hit(results, q) is not None
                snippets = sp._SNIPPET_RE.findall(results or "")
                first = sp.sentences(snippets[0][1])[:1] if snippets else []
                leading += bool(first) and q["answer"] in first[0]
            print(f"| {mode} | {lang} | {len(asked)} | {found / len(asked):.0%} | {leading / len(asked):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
