"""Chinese segmentation for the knowledge base, measured: Han bigrams (ours), SQLite's trigram tokenizer, jieba.

    python benchmarks/kb_retrieval.py

Over the bundled handbook (mosslm/resources/kb/handbook.jsonl), every held-out question of
questions.jsonl is asked twice: as the full question and as its short "query" field. A hit is right
when it comes from the (topic, lang) document (same title) and its text contains the answer.
All three schemes index the same chunks (kb.chunk of each document, title prepended, as kb.add does),
rank by BM25 and open the database once per query, as the Search plugin does:

1. bigram (ours): kb.add / kb.search; Han runs as overlapping bigrams in a unicode61 table.
2. trigram: fts5 tokenize='trigram' over the raw text. A trigram query term must have at least 3
   characters, so the query is the OR of the 3-character substrings of each run of letters, digits
   or Han in it; shorter runs ("is", a 2-character word between punctuation) cannot be searched.
3. jieba: jieba.lcut_for_search words, space-joined into a unicode61 table, queried as the OR of the
   query's words. Reported as null when jieba is not installed (it is not a mosslm dependency).

Prints a markdown table (top-1/top-3 accuracy per language and query kind, index build time and size,
mean query latency) and, last, the same numbers as one line of JSON.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mosslm.plugins import kb

QUESTIONS = kb.HANDBOOK.with_name("questions.jsonl")
K = 3
Search = Callable[[str], list[tuple[str, str]]]  # query -> (title, text) of the best K chunks
_WORD = re.compile(r"[^\W_]")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ours(home: Path) -> tuple[Search, float, Path]:
    os.environ["MOSSLM_HOME"] = str(home)
    start = time.perf_counter()
    kb.add("bench", [str(kb.HANDBOOK)])
    build = time.perf_counter() - start
    return (lambda q: [(h.title, h.text) for h in kb.search("bench", q, k=K)]), build, kb.kb_path("bench")


def fts_scheme(path: Path, tokenize: str, index: Callable[[str], str],
               terms: Callable[[str], list[str]]) -> tuple[Search, float, Path]:
    """An FTS5 table over the same chunks as kb.add: `index` maps chunk text to what is indexed,
    `terms` a query to the terms that are OR-ed."""
    start = time.perf_counter()
    rows = [(title, piece, index(title + "\n" + piece))
            for title, _, text in kb.read_documents(kb.HANDBOOK) for piece in kb.chunk(text)]
    db = sqlite3.connect(path)
    with db:
        db.execute(f"CREATE VIRTUAL TABLE c USING fts5(title UNINDEXED, text UNINDEXED, terms, tokenize='{tokenize}')")
        db.executemany("INSERT INTO c VALUES (?, ?, ?)", rows)
    db.close()
    build = time.perf_counter() - start

    def search(query: str) -> list[tuple[str, str]]:
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in dict.fromkeys(terms(query)))
        if not match:
            return []
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT title, text FROM c WHERE c MATCH ? ORDER BY bm25(c) LIMIT ?", (match, K)).fetchall()
        finally:
            conn.close()

    return search, build, path


def trigrams(query: str) -> list[str]:
    """3-character substrings of each word or Han run: the trigram tokenizer matches nothing shorter."""
    return [run[i:i + 3] for run in re.findall(r"[^\W_]+", query) for i in range(len(run) - 2)]


def evaluate(search: Search, questions: list[dict[str, Any]], titles: dict[tuple[str, str], str]) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    seconds: list[float] = []
    for lang in ("zh", "en"):
        asked = [q for q in questions if q["lang"] == lang]
        scores[lang] = {}
        for field in ("question", "query"):
            top1 = top3 = 0
            for q in asked:
                start = time.perf_counter()
                hits = search(q[field])
                seconds.append(time.perf_counter() - start)
                right = [title == titles.get((q["topic"], lang)) and q["answer"] in text for title, text in hits]
                top1 += bool(right and right[0])
                top3 += any(right)
            n = max(len(asked), 1)
            scores[lang][field] = {"top1": round(top1 / n, 4), "top3": round(top3 / n, 4)}
    scores["query_ms"] = round(1000 * sum(seconds) / max(len(seconds), 1), 3)
    return scores


def main() -> int:
    if not kb.HANDBOOK.exists() or not QUESTIONS.exists():
        print(f"missing {kb.HANDBOOK} or {QUESTIONS}", file=sys.stderr)
        return 1
    docs = read_jsonl(kb.HANDBOOK)
    titles = {(d["topic"], d["lang"]): d["title"] for d in docs}
    heldout = [q for q in read_jsonl(QUESTIONS) if q["split"] == "heldout"]
    n = {lang: sum(q["lang"] == lang for q in heldout) for lang in ("zh", "en")}
    print(f"{len(docs)} handbook documents, {len(heldout)} held-out questions ({n['zh']} zh, {n['en']} en), top-{K}\n")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        schemes: dict[str, Callable[[], tuple[Search, float, Path]] | None] = {
            "bigram (ours)": lambda: ours(Path(tmp) / "home"),
            "trigram": lambda: fts_scheme(Path(tmp) / "trigram.sqlite", "trigram", lambda text: text, trigrams),
        }
        try:
            import jieba

            jieba.setLogLevel(60)  # silence its dictionary-loading chatter
            jieba.initialize()  # load the dictionary outside the timed build

            def words(text: str) -> list[str]:
                return [w.lower() for w in jieba.lcut_for_search(text) if _WORD.search(w)]

            schemes["jieba"] = lambda: fts_scheme(Path(tmp) / "jieba.sqlite", "unicode61",
                                                  lambda text: " ".join(words(text)), words)
        except ImportError:
            print("jieba is not installed (pip install jieba to measure it): reported as null\n")
            schemes["jieba"] = None
        for name, make in schemes.items():
            if make is None:
                results[name] = None
                continue
            search, build, path = make()
            results[name] = {**evaluate(search, heldout, titles), "build_s": round(build, 3),
                             "index_kib": round(path.stat().st_size / 1024)}

    print("| scheme | lang | question top-1 | question top-3 | query top-1 | query top-3 | build s | index KiB | query ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if r is None:
            print(f"| {name} | – | not installed | | | | | | |")
            continue
        for lang in ("zh", "en"):
            q, s = r[lang]["question"], r[lang]["query"]
            print(f"| {name} | {lang} | {q['top1']:.1%} | {q['top3']:.1%} | {s['top1']:.1%} | {s['top3']:.1%} "
                  f"| {r['build_s']:.2f} | {r['index_kib']} | {r['query_ms']:.2f} |")
    print(json.dumps({"docs": len(docs), "heldout": n, "k": K, "schemes": results}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
