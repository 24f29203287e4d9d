"""The per-document chain of `moss data clean`, and its configuration.

`clean_shard` is all the work on one shard of raw records: it runs in a worker process of the pipeline, in a
datatrove task (engines.py), or inline. Only dedup needs state shared between shards, so it stays in the main
process (pipeline.py); the shard brings each kept document's MinHash signature back with it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...yaml_config import read_mapping
from ..pii import ALL as PII_KINDS
from ..pii import mask_pii
from .boilerplate import BoilerplateConfig, strip_boilerplate
from .dedup import DedupConfig, Signature, signature
from .document import BadRecord, Document, Dropped, RawRecord
from .extract import ExtractConfig, extract
from .langid import LanguageConfig, identify_language
from .normalize import NormalizeConfig, normalize
from .quality import QualityConfig, quality_filter
from .repeated import RepeatedLines, RepeatedLinesConfig


class ConfigError(ValueError):
    pass


@dataclass
class PiiConfig:
    mask: bool = True
    kinds: tuple[str, ...] = tuple(PII_KINDS)


@dataclass
class IngestConfig:
    text_field: str = "text"
    html_field: str | None = None
    shard_docs: int = 2000     # raw records per shard: the unit of parallel work, of resume and of line dedup


@dataclass
class CleanConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    boilerplate: BoilerplateConfig = field(default_factory=BoilerplateConfig)
    repeated: RepeatedLinesConfig = field(default_factory=RepeatedLinesConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)


def _section(cls: type, name: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown key(s) in config section {name!r}: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(fields)}")
    default = cls()
    out = {}
    for key, value in values.items():
        current = getattr(default, key)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{name}.{key} must be true or false, got {value!r}")
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ConfigError(f"{name}.{key} must be a number, got {value!r}")
            try:
                value = type(current)(value)
            except ValueError:
                raise ConfigError(f"{name}.{key} must be a number, got {value!r}") from None
        out[key] = value
    try:
        return dataclasses.replace(default, **out)  # the step's own checks run in its __post_init__
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config section {name!r}: {e}") from None


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> CleanConfig:
    """Defaults, then the YAML file's sections (one per step: keys are that step's config fields), then overrides."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config not found: {p}")
        data = read_mapping(p, ConfigError)
    for name, values in (overrides or {}).items():
        data.setdefault(name, {}).update(values)
    sections = {f.name: f for f in dataclasses.fields(CleanConfig)}
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; known: {', '.join(sections)}")
    cfg = CleanConfig()
    for name, values in data.items():
        setattr(cfg, name, _section(type(getattr(cfg, name)), name, values))
    if cfg.ingest.shard_docs < 1:
        raise ConfigError("ingest.shard_docs must be >= 1")
    return cfg


@dataclass
class ShardResult:
    """What a worker hands back for one shard: kept documents with their signatures, and the accounting."""

    kept: list[tuple[Document, Signature]]
    stats: dict[str, Any]
    dropped_samples: list[dict[str, Any]]
    trimmed_samples: list[dict[str, Any]]


def excerpt(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def add_sample(samples: list[dict[str, Any]], limit: int, sample: dict[str, Any]) -> None:
    """Keep `sample` for --explain unless its rule already has `limit` of them."""
    if sum(1 for s in samples if s["rule"] == sample["rule"]) < limit:
        samples.append(sample)


def clean_documents(docs: list[Document], cfg: CleanConfig, drop) -> list[Document]:
    """The document-level steps after extraction, in order; `drop(Dropped)` is told of every removal."""
    def run(step, step_cfg, items):
        out = []
        for doc in items:
            result = step(doc, step_cfg)
            if isinstance(result, Dropped):
                drop(result if result.doc is not None else dataclasses.replace(result, doc=doc))
            else:
                out.append(result)
        return out

    docs = run(normalize, cfg.normalize, docs)
    docs = run(strip_boilerplate, cfg.boilerplate, docs)
    repeated = RepeatedLines(cfg.repeated)
    repeated.fit(docs)  # lines repeated across many pages of one site: nav bars, slogans, footers
    docs = run(lambda d, _: repeated.apply(d), None, docs)
    docs = run(identify_language, cfg.language, docs)
    docs = run(quality_filter, cfg.quality, docs)
    if cfg.pii.mask:
        for doc in docs:
            doc.text, counts = mask_pii(doc.text, cfg.pii.kinds)
            if counts:
                doc.signals["pii"] = dict(counts)
    return docs


def clean_shard(records: list[RawRecord], cfg: CleanConfig, explain: int = 0, sign: bool = True) -> ShardResult:
    """Extract, clean and sign (MinHash, unless `sign` is off) one shard of raw records: a worker's unit of work."""
    drops: Counter = Counter()
    trimmed: Counter = Counter()
    langs: Counter = Counter()
    pii: Counter = Counter()
    dropped_samples: list[dict[str, Any]] = []
    trimmed_samples: list[dict[str, Any]] = []
    bad: list[str] = []

    def drop(d: Dropped) -> None:
        drops[d.rule] += 1
        if explain:  # no excerpts built unless asked for
            add_sample(dropped_samples, explain, {"rule": d.rule, "detail": d.detail, "id": d.doc.id if d.doc else None,
                                                  "text": excerpt(d.doc.text) if d.doc else ""})

    docs: list[Document] = []
    for record in records:
        result = extract(record, cfg.extract)
        if isinstance(result, BadRecord):
            bad.append(str(result))
        elif isinstance(result, Dropped):
            drop(result)
        else:
            docs.append(result)
    docs = clean_documents(docs, cfg, drop)
    kept = []
    for doc in docs:
        for rule, line in doc.removed:
            trimmed[rule] += 1
            if explain:
                add_sample(trimmed_samples, explain, {"rule": rule, "id": doc.id, "text": excerpt(line, 300)})
        langs[doc.lang or "unknown"] += 1
        pii.update(doc.signals.get("pii", {}))
        kept.append((doc, signature(doc, cfg.dedup) if sign else None))
    stats = {"records": len(records), "bytes_in": sum(len(r.content.encode("utf-8")) for r in records),
             "bad_records": bad, "drops": dict(drops), "trimmed_lines": dict(trimmed), "languages": dict(langs),
             "pii": dict(pii)}
    return ShardResult(kept, stats, dropped_samples, trimmed_samples)
