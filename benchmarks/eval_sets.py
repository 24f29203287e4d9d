"""Local multiple-choice sets for the eval benchmarks, made from the bundled handbook's questions.

Each handbook question becomes a 4-way item: its answer and three answers of other facts in the same
language, in a seeded random order. Chinese items go in the CMMLU layout, English ones in MMLU's, so both
loaders and both prompts are exercised. Nothing is downloaded.

Subjects are fields of the handbook's pages (geography, astronomy, ...), each holding several pages, so that
a subject has dozens of test questions, as CMMLU's and MMLU's do (CMMLU: 11,528 questions in 67 subjects);
`by="page"` makes one subject per page instead (about 8 test questions each at 500).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "mosslm" / "resources" / "kb"


# The handbook's topics by field: (first topic, last topic) -> (Chinese subject, English subject).
FIELDS = {("T01", "T08"): ("地理", "geography"), ("T09", "T11"): ("天文学", "astronomy"),
          ("T12", "T14"): ("生物", "biology"), ("T15", "T19"): ("中国历史", "chinese_history"),
          ("T20", "T23"): ("计算机科学", "computer_science"), ("T24", "T27"): ("人工智能", "artificial_intelligence"),
          ("T28", "T30"): ("日常生活", "everyday_life")}


def _field(topic: str, lang: str) -> str:
    for (first, last), names in FIELDS.items():
        if first <= topic <= last:
            return names[lang == "en"]
    raise KeyError(f"topic {topic} has no field in FIELDS")


def _subjects(by: str) -> dict[tuple[str, str], str]:
    pages = [json.loads(line) for line in (KB / "handbook.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    if by == "page":
        return {(p["topic"], p["lang"]): p["title"] for p in pages}
    return {(p["topic"], p["lang"]): _field(p["topic"], p["lang"]) for p in pages}


def write_sets(out: Path, limit: int | None = None, seed: int = 0, dev_per_subject: int = 5,
               by: str = "field") -> dict[str, Path]:
    """{"cmmlu": DIR, "mmlu": DIR} with `limit` test items in all (half Chinese, half English; default: every
    question but the dev ones) and a dev split of `dev_per_subject` other items per subject for few-shot.
    `by`: "field" (a subject per field, several pages) or "page" (a subject per handbook page)."""
    if by not in ("field", "page"):
        raise ValueError(f"by must be 'field' or 'page', not {by!r}")
    rng = random.Random(seed)
    titles = _subjects(by)
    rows = [json.loads(line) for line in (KB / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    rng.shuffle(rows)
    dev, rest, taken = [], [], {}
    for r in rows:
        key = (titles[(r["topic"], r["lang"])], r["lang"])
        if taken.get(key, 0) < dev_per_subject:
            taken[key] = taken.get(key, 0) + 1
            dev.append(r)
        else:
            rest.append(r)
    rows = rest
    if limit:
        zh = [r for r in rows if r["lang"] == "zh"][:limit // 2]
        en = [r for r in rows if r["lang"] == "en"][:limit - len(zh)]
        rows = zh + en
    answers = {lang: sorted({(r["topic"], r["fact"], r["answer"]) for r in rows + dev if r["lang"] == lang})
               for lang in ("zh", "en")}
    dirs = {"cmmlu": out / "cmmlu", "mmlu": out / "mmlu"}
    for split, items in (("test", rows), ("dev", dev)):
        _write_split(dirs, split, _items(items, answers, titles, rng))
    return dirs


def _items(rows, answers, titles, rng) -> dict[tuple[str, str], list[list[str]]]:
    per: dict[tuple[str, str], list[list[str]]] = {}
    for r in rows:
        others = [a for t, f, a in answers[r["lang"]] if (t, f) != (r["topic"], r["fact"]) and a != r["answer"]]
        options = rng.sample(sorted(set(others)), 3) + [r["answer"]]
        rng.shuffle(options)
        letter = "ABCD"[options.index(r["answer"])]
        subject = titles[(r["topic"], r["lang"])].replace(" ", "_").replace("(", "").replace(")", "")
        per.setdefault((r["lang"], subject), []).append([r["question"], *options, letter])
    return per


def _write_split(dirs: dict[str, Path], split: str, per: dict) -> None:
    for (lang, subject), items in sorted(per.items()):
        if lang == "zh":
            path = dirs["cmmlu"] / split / f"{subject}.csv"
            header = [["", "Question", "A", "B", "C", "D", "Answer"]]
            body = [[str(i), *row] for i, row in enumerate(items)]
        else:
            path = dirs["mmlu"] / split / f"{subject}_{split}.csv"
            header, body = [], items
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(header + body)
