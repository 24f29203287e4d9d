"""The same cleaning chain on an existing distributed engine: datatrove (local, Slurm or Ray executors).

`MosslmClean` is a datatrove pipeline step that runs `steps.clean_shard` (extraction, normalisation,
boilerplate, repeated lines, language ID, quality, PII) on batches of a task's documents, so a datatrove
pipeline such as

    LocalPipelineExecutor(pipeline=[WarcReader("crawl/"), MosslmClean(kind="html"), JsonlWriter("clean/")],
                          tasks=64, workers=8).run()

or the same list under `SlurmPipelineExecutor` / `RayPipelineExecutor` cleans a crawl the way `moss data clean`
does, on a cluster. Cross-shard deduplication there is datatrove's own (its MinHash stages), since its tasks share
no index; `moss data clean` keeps ours. Needs `pip install 'mosslm[pipeline]'` (datatrove).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .document import RawRecord
from .steps import CleanConfig, clean_shard

try:
    from datatrove.data import Document as DatatroveDocument
    from datatrove.pipeline.base import PipelineStep
except ImportError as e:  # a clear message instead of a stack of datatrove internals
    raise ImportError("the datatrove engine needs datatrove: pip install 'mosslm[pipeline]'") from e


class MosslmClean(PipelineStep):
    """mosslm's per-document cleaning chain as a datatrove step. `kind` says what the documents' text holds:
    "html" (a WarcReader's pages, or an html field) or "text"."""

    name = "mosslm clean"
    type = "Filter"

    def __init__(self, config: CleanConfig | None = None, kind: str = "text", batch: int | None = None):
        super().__init__()
        if kind not in ("text", "html"):
            raise ValueError(f"kind must be 'text' or 'html', got {kind!r}")
        self.config = config or CleanConfig()
        self.kind = kind
        self.batch = batch or self.config.ingest.shard_docs

    def _clean(self, docs: list[DatatroveDocument]) -> Iterator[DatatroveDocument]:
        by_id = {d.id: d for d in docs}
        records = [RawRecord(id=d.id, source=str(d.metadata.get("file_path", "")), kind=self.kind, content=d.text,
                             url=d.metadata.get("url")) for d in docs]
        result = clean_shard(records, self.config, sign=False)
        for rule, n in result.stats["drops"].items():
            self.stat_update(rule, value=n)
        for doc, _ in result.kept:
            out = by_id[doc.id]
            out.text = doc.text
            out.metadata.update({"lang": doc.lang, "lang_score": doc.lang_score, "signals": doc.signals})
            self.stat_update("kept")
            yield out

    def run(self, data: Iterator[DatatroveDocument], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        batch: list[DatatroveDocument] = []
        for document in data:
            batch.append(document)
            if len(batch) >= self.batch:
                with self.track_time(unit="batch"):
                    yield from self._clean(batch)
                batch = []
        if batch:
            with self.track_time(unit="batch"):
                yield from self._clean(batch)
