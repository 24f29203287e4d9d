"""Search tool choice of a trained model over every held-out handbook question (not the quick eval's sample).

    python benchmarks/search_choice.py runs/speedrun-plugins/sft/final

Each of the 360 held-out questions of mosslm/resources/kb/questions.jsonl goes through the speedrun quick eval's agent
(quick.eval_agent: greedy, the plugins the model was trained with) and its scoring: a Search
call is well-formed when it is the turn's only command and its query brings the asked fact's passage
into the top 3; an answer is correct when the reply contains the fact. Prints one row per language
and the total, then the same numbers as one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosslm.data.synth import plugins as synth_plugins
from mosslm.eval import quick

METRICS = ("search_well_formed", "answer_correct")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a checkpoint folder trained with the plugins recipe")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    agent = quick.eval_agent(args.model, args.max_new_tokens)
    _, questions = synth_plugins.handbook()
    hits: Counter = Counter()
    for q in (q for q in questions if q["split"] == "heldout"):
        agent.clear()
        for _ in agent.send(q["question"]):
            pass
        item = {"task": "search", "lang": q["lang"], "question": q["question"], "topic": q["topic"],
                "answer": q["answer"]}
        hits[(q["lang"], "n")] += 1
        for metric, ok in quick.score(item, agent.history.turns[-1]).items():
            hits[(q["lang"], metric)] += int(ok)
    rows = {lang: {"n": hits[(lang, "n")], **{m: hits[(lang, m)] / hits[(lang, "n")] for m in METRICS}}
            for lang in ("zh", "en")}
    total = sum(r["n"] for r in rows.values())
    rows["all"] = {"n": total, **{m: sum(hits[(lang, m)] for lang in ("zh", "en")) / total for m in METRICS}}
    print("| questions | n | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, row in rows.items():
        print(f"| {name} | {row['n']} | " + " | ".join(f"{row[m]:.1%}" for m in METRICS) + " |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
