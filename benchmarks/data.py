"""`moss data clean` throughput: MB/s per worker, the speed-up from 1 to 2 workers, and the ratio to datatrove's
equivalent steps on the same input, measured in one run.

    python benchmarks/data.py [--pages N] [--out DIR]

Input: N HTML news pages of the project's labelled corpus (mosslm/data/web/labelled.py), Chinese and English,
with their link lists, widgets, ads and footers, as one JSONL file with an "html" field.
- ours: `moss data clean --html-field html` with 1 and then 2 workers (extraction, normalisation, boilerplate,
  repeated lines, language ID, quality, PII, MinHash and the dedup index);
- datatrove: its Trafilatura extractor, Gopher repetition and quality, C4 and FineWeb quality filters and its PII
  formatter, on LocalPipelineExecutor with 1 task (its language filter is left out: its fastText model is a hub
  download; its MinHash dedup is a separate 4-stage job, also left out);
- our chain as a datatrove step (engines.MosslmClean) on the same executor, for the engine's own overhead.
MB/s counts input bytes (the HTML) over wall time, the same way for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mosslm.data.web import labelled  # noqa: E402
from mosslm.data.web.pipeline import clean  # noqa: E402
from mosslm.data.web.steps import load_config  # noqa: E402


def html_input(folder: Path, pages: int, seed: int) -> tuple[Path, int]:
    corpus = labelled.generate(folder / "corpus", seed=seed, docs=pages)
    records = [json.loads(line) for line in (corpus / "pages.jsonl").read_text(encoding="utf-8").splitlines()]
    path = folder / "pages-html.jsonl"
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            html = (corpus / "pages" / f"{r['id']}.html").read_text(encoding="utf-8")
            size += len(html.encode("utf-8"))
            f.write(json.dumps({"id": r["id"], "url": r["url"], "html": html}, ensure_ascii=False) + "\n")
    return path, size


def ours(path: Path, out: Path, workers: int, shard_docs: int) -> tuple[float, dict]:
    cfg = load_config(None, {"ingest": {"html_field": "html", "shard_docs": shard_docs}})
    started = time.perf_counter()
    report = clean([str(path)], out, cfg, workers=workers, progress=False)
    return time.perf_counter() - started, report["all"]


def datatrove_run(path: Path, out: Path, steps: list) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    pipeline = [JsonlReader(str(path.parent), glob_pattern=path.name, text_key="html"), *steps,
                JsonlWriter(str(out / "data"), compression=None)]
    started = time.perf_counter()
    LocalPipelineExecutor(pipeline=pipeline, tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    return time.perf_counter() - started


def kept(folder: Path) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in (folder / "data").glob("*.jsonl"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="keep the runs here (default: a temp folder, removed)")
    args = ap.parse_args()
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mosslm-data-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from datatrove.pipeline.extractors import Trafilatura
        from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                                GopherRepetitionFilter)
        from datatrove.pipeline.formatters import PIIFormatter
    except ImportError:
        sys.exit("the comparison needs datatrove and spacy (its word tokenizer): pip install 'mosslm[pipeline]' spacy")
    from mosslm.data.web.engines import MosslmClean

    path, size = html_input(folder, args.pages, args.seed)
    mb = size / 1e6
    print(f"input: {args.pages} HTML pages, {mb:.1f} MB, {os.cpu_count()} CPUs", flush=True)
    shard_docs = max(50, args.pages // 8)  # enough shards for 2 workers to share
    rows = []
    t1, all1 = ours(path, folder / "ours-1", 1, shard_docs)
    rows.append(("moss data clean, 1 worker", t1, all1["documents_out"]))
    t2, all2 = ours(path, folder / "ours-2", 2, shard_docs)
    rows.append(("moss data clean, 2 workers", t2, all2["documents_out"]))
    theirs = [Trafilatura(favour_precision=True, timeout=5), GopherRepetitionFilter(), GopherQualityFilter(),
              C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(), PIIFormatter()]
    td = datatrove_run(path, folder / "datatrove", theirs)
    rows.append(("datatrove equivalent steps, 1 task", td, kept(folder / "datatrove")))
    cfg = load_config(None, {"ingest": {"shard_docs": shard_docs}})
    tm = datatrove_run(path, folder / "datatrove-mosslm", [MosslmClean(cfg, kind="html")])
    rows.append(("our chain as a datatrove step, 1 task", tm, kept(folder / "datatrove-mosslm")))

    print("\n| run | seconds | MB/s | MB/s per worker | documents kept |\n|---|---|---|---|---|")
    for name, seconds, n in rows:
        workers = 2 if "2 workers" in name else 1
        print(f"| {name} | {seconds:.1f} | {mb / seconds:.2f} | {mb / seconds / workers:.2f} | {n} |")
    print(f"\nspeed-up from 1 to 2 workers: {t1 / t2:.2f}x")
    print(f"ours (1 worker) against datatrove's equivalent steps (1 task): {td / t1:.2f}x the throughput")
    print(f"our chain on datatrove's executor against ours: {t1 / tm:.2f}x the throughput")
    if not args.out:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
