"""The web-text pipeline: raw pages and dumps in, clean deduplicated training text out (`moss data clean`).

ingest -> extract -> normalize -> boilerplate -> repeated lines -> language ID -> quality -> PII -> dedup ->
JSONL shards (pipeline.py), then `moss data tokenize` (data/shards.py). Each per-document step is a plain
function over document.Document; engines.py runs the same chain as a datatrove pipeline step.
"""
