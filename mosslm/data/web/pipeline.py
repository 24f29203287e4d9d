"""`moss data clean INPUT... --out DIR`: raw pages and dumps in, clean deduplicated JSONL shards out.

The main process reads raw records (cheap), cuts them into shards of `ingest.shard_docs`, and hands each shard
to a worker (`steps.clean_shard`: extraction, normalisation, boilerplate, repeated lines, language ID, quality,
PII, MinHash). Results come back in order; the main process alone deduplicates them against the persistent
index (exact and MinHash LSH, dedup.py), writes the shard's output to a temp file and renames it, then commits
the index together with the shard's "done" mark in one transaction. A killed run therefore loses at most the
shards in flight, and a rerun with the same --out skips every finished shard (shards are named by a hash of the
ids of their records, so new inputs make new shards, deduplicated against everything the index has seen).
Memory stays bounded: at most workers + 1 shards are in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dedup import DedupIndex
from .document import BadRecord, RawRecord
from .ingest import input_files, read_records
from .report import write_report
from .steps import CleanConfig, ShardResult, add_sample, clean_shard, excerpt


@dataclass
class Shard:
    key: str
    records: list[RawRecord]
    bad: list[BadRecord]


def shards(paths: list[str], cfg: CleanConfig) -> Iterator[Shard]:
    """Raw records cut into shards; unreadable records are carried along for the shard's report."""
    records: list[RawRecord] = []
    bad: list[BadRecord] = []
    for path in input_files(paths):
        for item in read_records(path, cfg.ingest.text_field, cfg.ingest.html_field):
            if isinstance(item, BadRecord):
                print(f"moss data clean: {item}", file=sys.stderr)
                bad.append(item)
                continue
            records.append(item)
            if len(records) >= cfg.ingest.shard_docs:
                yield Shard(_key(records), records, bad)
                records, bad = [], []
    if records or bad:
        yield Shard(_key(records) if records else _key_bad(bad), records, bad)


def _key(records: list[RawRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.source.encode() + b"\0" + r.id.encode() + b"\n")
    return h.hexdigest()[:16]


def _key_bad(bad: list[BadRecord]) -> str:
    return hashlib.sha256("\n".join(str(b) for b in bad).encode()).hexdigest()[:16]


def _output_line(doc) -> str:
    return json.dumps({"id": doc.id, "source": doc.source, "url": doc.url, "lang": doc.lang,
                       "lang_score": None if doc.lang_score is None else round(doc.lang_score, 4),
                       "text": doc.text, "signals": doc.signals, **({"meta": doc.meta} if doc.meta else {})},
                      ensure_ascii=False) + "\n"


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    tmp.replace(path)


def _finish_shard(shard: Shard, result: ShardResult, index: DedupIndex, out: Path, explain: int) -> dict[str, Any]:
    kept_lines: list[str] = []
    kept_docs = []
    drops = Counter(result.stats["drops"])
    dropped_samples = list(result.dropped_samples)
    for doc, sig in result.kept:
        match = index.match_detail(doc.id, sig)
        if match:
            rule, first, jaccard = match
            drops[rule] += 1
            if explain:
                detail = f"duplicate of {first} (estimated Jaccard {jaccard:.2f})"
                add_sample(dropped_samples, explain, {"rule": rule, "detail": detail, "id": doc.id,
                                                      "text": excerpt(doc.text)})
            continue
        index.add(doc.id, sig)
        kept_docs.append(doc)
        kept_lines.append(_output_line(doc))
    for message in result.stats["bad_records"]:  # found by extraction in the worker (e.g. HTML without a body)
        print(f"moss data clean: {message}", file=sys.stderr)
    stats = dict(result.stats)
    stats["bad_records"] = [str(b) for b in shard.bad] + list(result.stats["bad_records"])
    stats["drops"] = dict(drops)
    stats["documents_out"] = len(kept_lines)
    stats["bytes_out"] = sum(len(doc.text.encode("utf-8")) for doc in kept_docs)
    stats["languages"] = dict(Counter(doc.lang or "unknown" for doc in kept_docs))
    _write_atomic(out / "data" / f"part-{shard.key}.jsonl", kept_lines)
    if explain:
        _write_atomic(out / "explain" / f"part-{shard.key}.jsonl",
                      [json.dumps({"kind": "dropped", **s}, ensure_ascii=False) + "\n" for s in dropped_samples] +
                      [json.dumps({"kind": "trimmed", **s}, ensure_ascii=False) + "\n" for s in result.trimmed_samples])
    index.mark_done(shard.key, stats)
    index.commit()  # the shard's output, its dedup entries and its done mark become durable together
    return stats


def clean(paths: list[str], out: str | Path, cfg: CleanConfig, workers: int = 1, explain: int = 0,
          index_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Runs the pipeline; returns the report (also written to OUT/report.json and OUT/report.md)."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    if explain:
        (out / "explain").mkdir(exist_ok=True)
    config_file = out / "config.json"
    _write_atomic(config_file, [json.dumps(dataclasses.asdict(cfg), ensure_ascii=False, indent=2, default=str) + "\n"])
    index = DedupIndex(Path(index_path) if index_path else out / "dedup.sqlite", cfg.dedup)
    started = time.time()
    done = index.done()
    skipped = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc="clean", unit="doc", dynamic_ncols=True)
    this_run: list[dict[str, Any]] = []

    def account(stats: dict[str, Any]) -> None:
        this_run.append(stats)
        if bar is not None:
            bar.update(stats["records"])
            kept = sum(s["documents_out"] for s in this_run)
            bar.set_postfix(kept=kept, shards=len(this_run), skipped=skipped)

    try:
        if workers <= 1:
            for shard in shards(paths, cfg):
                if shard.key in done:
                    skipped += 1
                    continue
                account(_finish_shard(shard, clean_shard(shard.records, cfg, explain), index, out, explain))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                pending: list[tuple[Shard, Future]] = []
                for shard in shards(paths, cfg):
                    if shard.key in done:
                        skipped += 1
                        continue
                    pending.append((shard, pool.submit(clean_shard, shard.records, cfg, explain)))
                    while len(pending) > workers:  # bounded: finish the oldest before reading more
                        first, future = pending.pop(0)
                        account(_finish_shard(first, future.result(), index, out, explain))
                for first, future in pending:
                    account(_finish_shard(first, future.result(), index, out, explain))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.time() - started
    report = write_report(out, index.done(), this_run, seconds, workers, skipped, explain)
    index.close()
    return report
