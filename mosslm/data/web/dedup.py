"""Exact and near-duplicate removal with an index that persists across runs.

Two stages, so that the expensive part runs in parallel:

- `signature(doc, cfg)` runs in the worker processes. It normalises the text (NFKC, lower case, every
  non-word character -- whitespace, punctuation, symbols -- removed), hashes it into the exact key, and
  builds a MinHash (datasketch) over the character n-grams of the normalised text. Character n-grams need
  no word segmentation, so the same shingles work for Chinese and English. The n-gram hashes are computed
  for the whole document at once with numpy; datasketch then applies its permutations to the batch.
- `DedupIndex` runs in the one process that writes the output. It keeps the exact keys, the LSH band
  buckets and the MinHash of every kept document in a SQLite file (WAL), so a later, incremental run drops
  duplicates of documents an earlier run kept. Everything added since the last `commit()` lives in the
  open transaction: it is visible to `match` at once (duplicates within a shard are caught) and is gone
  if the process dies before the commit (the pipeline commits once per finished output shard).

A document is a near-duplicate when it shares an LSH bucket with a kept document and the MinHash estimate
of their Jaccard similarity is at least `cfg.cutoff`: the threshold less the estimate's 95% one-sided error,
so that pairs at or above the threshold are caught (see `DedupConfig.cutoff`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

import numpy as np
from datasketch import MinHash

from mosslm.data.web.document import Document, Dropped

EXACT, NEAR = "dedup.exact", "dedup.near"

_SEED = 1                                   # datasketch's permutation seed; part of the index format
_CUTOFF_Z = 1.645                           # one-sided 95% normal quantile, see DedupConfig.cutoff
_LSH_RECALL = 0.99                          # chance that a pair exactly at the threshold becomes a candidate
_BATCH = 4096                               # n-grams per datasketch batch: bounds memory at BATCH x num_perm
_NON_WORD = re.compile(r"[\W_]+")
_NGRAM_MUL = np.uint64(0x9E3779B185EBCA87)  # odd 64-bit constants for the polynomial n-gram hash
_NGRAM_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_BAND_MUL = np.uint64(0x100000001B3)
_BAND_SALT = np.uint64(0x27D4EB2F165667C5)
_FORMAT = 1


@dataclass
class DedupConfig:
    """The `dedup` section of the `moss data clean` config."""

    exact: bool = True          # drop documents whose normalised text equals a kept one's
    near: bool = True           # drop near-duplicates (MinHash LSH)
    threshold: float = 0.8      # Jaccard similarity of the n-gram sets at which a document is a near-duplicate
    ngram: int = 5              # characters per shingle, counted on the normalised text
    num_perm: int = 128         # MinHash permutations

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"dedup.threshold must be in (0, 1], got {self.threshold!r}")
        if not 1 <= self.ngram <= 64:
            raise ValueError(f"dedup.ngram must be between 1 and 64, got {self.ngram!r}")
        if not 2 <= self.num_perm <= 4096:
            raise ValueError(f"dedup.num_perm must be between 2 and 4096, got {self.num_perm!r}")

    @property
    def cutoff(self) -> float:
        """The estimated Jaccard at which an LSH candidate counts as a near-duplicate.

        Why below `threshold`: the MinHash estimate of a pair exactly at the threshold falls below it half
        the time (standard error sqrt(t(1-t)/num_perm), 0.035 for 0.8/128), so comparing the estimate with
        the threshold itself lets through about a fifth of the duplicates between 0.80 and 0.85. One-sided
        95% below it, a pair at the threshold is caught 95% of the time and one at 0.65 less than 2%.
        """
        return self.threshold - _CUTOFF_Z * math.sqrt(self.threshold * (1 - self.threshold) / self.num_perm)

    @property
    def bands(self) -> int:
        return lsh_bands_rows(self.threshold, self.num_perm)[0]

    @property
    def rows(self) -> int:
        return lsh_bands_rows(self.threshold, self.num_perm)[1]


@lru_cache(maxsize=64)
def lsh_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """The LSH layout (bands, rows per band) for `threshold` and `num_perm`.

    Why not datasketch's optimiser (`MinHashLSH(threshold, num_perm).b/.r`): it balances the areas of false
    positives and false negatives and gives 9 x 13 for 0.8/128, which makes a pair at Jaccard 0.8 a
    candidate only 40% of the time. Candidates are checked against `DedupConfig.cutoff` anyway, so a false
    candidate costs one comparison while a missed one is a duplicate in the output. So: the most rows per
    band (fewest false candidates) for which a pair at the threshold is a candidate with probability >= 0.99,
    that is 1 - (1 - t^r)^b >= 0.99 with b = num_perm // r. For 0.8/128 that is 21 bands x 6 rows.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= _LSH_RECALL:
            return bands, rows
    return num_perm, 1


@dataclass(frozen=True)
class Signature:
    """What the index needs of a document: small and picklable, so workers can send it back."""

    exact_key: bytes            # 16-byte BLAKE2b of the normalised text
    minhash: bytes | None       # num_perm little-endian uint32 MinHash values; None when near is off or no
                                # characters are left after normalising


def normalise_for_dedup(text: str) -> str:
    """The text duplicates are compared on: NFKC, lower case, whitespace/punctuation/symbols removed."""
    if not unicodedata.is_normalized("NFKC", text):     # the quick check is much cheaper than normalising
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub("", text.lower())


def ngram_hashes(normalised: str, ngram: int) -> np.ndarray:
    """The distinct 32-bit hashes of the character n-grams of `normalised` (the whole text if shorter)."""
    codes = np.frombuffer(normalised.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.empty(0, dtype=np.uint32)
    width = min(ngram, codes.size)
    count = codes.size - width + 1
    hashes = codes[:count].copy()
    for offset in range(1, width):          # polynomial hash of every window at once (wraps mod 2^64)
        hashes = hashes * _NGRAM_MUL + codes[offset:offset + count]
    hashes = np.sort(((hashes * _NGRAM_MIX) >> np.uint64(32)).astype(np.uint32))
    distinct = np.empty(hashes.size, dtype=bool)      # sort + neighbour test: np.unique is 10x slower here
    distinct[0] = True
    np.not_equal(hashes[1:], hashes[:-1], out=distinct[1:])
    return hashes[distinct]


def _identity(value: Any) -> Any:            # the n-grams arrive already hashed
    return value


@lru_cache(maxsize=8)
def _empty_minhash(num_perm: int) -> MinHash:
    # Building the permutations is the slow part of MinHash(); copies of one template share them.
    return MinHash(num_perm=num_perm, seed=_SEED, hashfunc=_identity, scheme="affine32")


def signature(doc: Document, cfg: DedupConfig) -> Signature:
    normalised = normalise_for_dedup(doc.text)
    exact_key = hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()
    if not cfg.near or not normalised:
        return Signature(exact_key, None)
    hashes = ngram_hashes(normalised, cfg.ngram)
    minhash = _empty_minhash(cfg.num_perm).copy()
    for start in range(0, hashes.size, _BATCH):
        minhash.update_batch(hashes[start:start + _BATCH])
    return Signature(exact_key, minhash.hashvalues.astype("<u4").tobytes())


def _fingerprint(num_perm: int) -> str:
    """Changes if datasketch ever draws different permutations for the same seed (old MinHashes would then
    be incomparable with new ones)."""
    a, b = _empty_minhash(num_perm).permutations
    return hashlib.blake2b(np.asarray(a).tobytes() + np.asarray(b).tobytes(), digest_size=8).hexdigest()


class DedupIndexError(ValueError):
    """The index file cannot be used: not an index, or made with other settings."""


_CHOSEN = ("ngram", "num_perm", "threshold", "near")   # settings a user picks; a mismatch is refused
_FORMAT_KEYS = ("format", "normalisation", "minhash")   # set by this code; a mismatch means another version

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE docs (num INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, exact_key BLOB NOT NULL, minhash BLOB);
CREATE INDEX docs_exact ON docs (exact_key);
CREATE TABLE buckets (key INTEGER NOT NULL, num INTEGER NOT NULL, PRIMARY KEY (key, num)) WITHOUT ROWID;
CREATE TABLE shards (shard TEXT PRIMARY KEY, stats TEXT NOT NULL);
"""


class DedupIndex:
    """The persistent record of every kept document. One writer process at a time; not thread-safe."""

    def __init__(self, path: Path, cfg: DedupConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)  # we issue BEGIN ourselves
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")   # a commit survives power loss, not just a crash
            settings = self._open_or_create()
        except sqlite3.OperationalError as err:
            self._db.close()
            if "locked" in str(err):
                raise DedupIndexError(f"{self.path}: the dedup index is locked by another writer ({err})") from err
            raise DedupIndexError(f"{self.path}: cannot open the dedup index ({err})") from err
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise DedupIndexError(f"{self.path}: not a dedup index ({err})") from err
        except DedupIndexError:
            self._db.close()
            raise
        # The layout stored in the file wins: the buckets already written were cut with it.
        self.bands, self.rows = int(settings["bands"]), int(settings["rows"])

    # -- opening -------------------------------------------------------------------------------------

    def _wanted_settings(self) -> dict[str, Any]:
        bands, rows = lsh_bands_rows(self.cfg.threshold, self.cfg.num_perm)
        return {"format": _FORMAT, "ngram": self.cfg.ngram, "num_perm": self.cfg.num_perm,
                "threshold": self.cfg.threshold, "near": self.cfg.near, "bands": bands, "rows": rows,
                "normalisation": "nfkc-lower-nonword/poly64-ngrams",
                "minhash": f"datasketch-affine32-seed{_SEED}-{_fingerprint(self.cfg.num_perm)}"}

    def _stored_settings(self) -> dict[str, Any] | None:
        """The settings the file was made with; None for a new, empty file."""
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='settings'").fetchone() if "meta" in tables else None
        if row is None:
            raise DedupIndexError(f"{self.path}: a SQLite file, but not a dedup index (it has no settings)")
        return json.loads(row[0])

    def _open_or_create(self) -> dict[str, Any]:
        settings = self._stored_settings()
        if settings is None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                settings = self._stored_settings()      # another process may have created it meanwhile
                if settings is None:
                    settings = self._wanted_settings()
                    for statement in _SCHEMA.strip().split(";\n"):
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO meta VALUES ('settings', ?)", (json.dumps(settings),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._check(settings)
        return settings

    def _check(self, stored: dict[str, Any]) -> None:
        wanted = self._wanted_settings()
        chosen = [f"{key}={stored.get(key)!r} (this run: {wanted[key]!r})"
                  for key in _CHOSEN if stored.get(key) != wanted[key]]
        if chosen:
            raise DedupIndexError(
                f"{self.path}: this dedup index was made with other settings: {', '.join(chosen)}. Its "
                "signatures and buckets only compare with the settings it was made with: use them, or "
                "start a new index file.")
        other = [f"{key}={stored.get(key)!r} (this version: {wanted[key]!r})"
                 for key in _FORMAT_KEYS if stored.get(key) != wanted[key]]
        if other:
            raise DedupIndexError(
                f"{self.path}: this dedup index was made by an incompatible version of mosslm or datasketch "
                f"({', '.join(other)}); start a new index file.")

    # -- matching and adding ---------------------------------------------------------------------------

    def _values(self, sig: Signature) -> np.ndarray:
        values = np.frombuffer(sig.minhash or b"", dtype="<u4")
        if values.size != self.cfg.num_perm:
            raise ValueError(f"{self.path}: a signature with {values.size} MinHash values, but the index "
                             f"uses num_perm={self.cfg.num_perm}: compute signatures with the same DedupConfig")
        return values

    def _band_keys(self, values: np.ndarray) -> list[int]:
        """One 64-bit bucket key per band; the band number is mixed in, so equal rows in two bands differ."""
        rows = values[:self.bands * self.rows].reshape(self.bands, self.rows).astype(np.uint64)
        keys = np.arange(1, self.bands + 1, dtype=np.uint64) * _BAND_SALT
        for column in range(self.rows):
            keys = (keys ^ rows[:, column]) * _BAND_MUL
        return keys.view(np.int64).tolist()

    def match_detail(self, doc_id: str, sig: Signature) -> tuple[str, str, float] | None:
        """Like `match`, with the estimated Jaccard similarity (1.0 for an exact duplicate)."""
        if self.cfg.exact:
            # A document is never a duplicate of itself: re-processing a shard finds nothing to drop.
            row = self._db.execute("SELECT id FROM docs WHERE exact_key = ? AND id <> ? ORDER BY num LIMIT 1",
                                   (sig.exact_key, doc_id)).fetchone()
            if row is not None:
                return EXACT, row[0], 1.0
        if not self.cfg.near or sig.minhash is None:
            return None
        values = self._values(sig)
        keys = self._band_keys(values)
        found = self._db.execute(
            f"SELECT id, minhash FROM docs WHERE num IN (SELECT num FROM buckets WHERE key IN "
            f"({','.join('?' * len(keys))})) AND id <> ? ORDER BY num", (*keys, doc_id)).fetchall()
        if not found:
            return None
        candidates = np.frombuffer(b"".join(blob for _, blob in found), dtype="<u4").reshape(len(found), -1)
        similarity = np.count_nonzero(candidates == values, axis=1) / values.size
        best = int(np.argmax(similarity))       # the most similar; the earliest of equals
        if similarity[best] >= self.cfg.cutoff:
            return NEAR, found[best][0], float(similarity[best])
        return None

    def match(self, doc_id: str, sig: Signature) -> tuple[str, str] | None:
        """(rule, id of the kept document that `doc_id` duplicates), or None when it duplicates none."""
        found = self.match_detail(doc_id, sig)
        return None if found is None else (found[0], found[1])

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def add(self, doc_id: str, sig: Signature) -> None:
        """Record a kept document; durable at the next `commit()`. An id already recorded is left as it is."""
        values = self._values(sig) if self.cfg.near and sig.minhash is not None else None
        self._begin()
        # The exact key is stored even with exact=False: cheap, and a later run may turn exact on.
        cursor = self._db.execute("INSERT OR IGNORE INTO docs (id, exact_key, minhash) VALUES (?, ?, ?)",
                                  (doc_id, sig.exact_key, None if values is None else values.tobytes()))
        if cursor.rowcount == 0 or values is None:
            return
        num = cursor.lastrowid
        self._db.executemany("INSERT OR IGNORE INTO buckets (key, num) VALUES (?, ?)",
                             [(key, num) for key in self._band_keys(values)])

    def mark_done(self, shard: str, stats: dict[str, Any]) -> None:
        """Record a finished output shard; committed together with its documents by `commit()`."""
        try:
            encoded = json.dumps(stats, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.path}: the stats of shard {shard!r} are not JSON-serialisable: {err}") from err
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO shards (shard, stats) VALUES (?, ?)", (shard, encoded))

    def done(self) -> dict[str, dict[str, Any]]:
        """The finished shards and their stats (committed ones, and this session's not yet committed)."""
        return {shard: json.loads(stats) for shard, stats in
                self._db.execute("SELECT shard, stats FROM shards ORDER BY shard")}

    def commit(self) -> None:
        """Make every `add` and `mark_done` so far durable, in one transaction."""
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def close(self) -> None:
        """Close the file; what was added since the last `commit()` is discarded, as after a crash."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def deduplicate(doc: Document, sig: Signature, index: DedupIndex) -> Document | Dropped:
    """The dedup step as the pipeline runs it: drop a duplicate of a kept document, else keep and record it."""
    found = index.match_detail(doc.id, sig)
    if found is None:
        index.add(doc.id, sig)
        return doc
    rule, earlier, similarity = found
    if rule == EXACT:
        return Dropped(rule, f"same normalised text as {earlier}", doc)
    return Dropped(rule, f"near-duplicate of {earlier}: estimated Jaccard {similarity:.2f} (threshold "
                         f"{index.cfg.threshold}, counted from {index.cfg.cutoff:.3f})", doc)
