"""`moss data tokenize`: texts in, memory-mapped token shards out, validated on load.

A shard folder holds `tokens-00000.bin`, ... (flat arrays of token ids, uint16 when the vocabulary fits, else
uint32; every document is followed by the end-of-text token) and `index.json` (dtype, end-of-text id, the
tokenizer's vocabulary size and hash, and per shard its file, tokens, documents and sha256). Each shard is
written to a temp file and renamed, and index.json is written last, so a killed run never leaves a folder that
loads: only finished shards and temp files, which the next run removes. Memory stays bounded: texts are read
and encoded a batch at a time, and a shard goes to disk as it fills.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .text import read_texts

FORMAT = "mosslm-token-shards"
VERSION = 1
INDEX = "index.json"
SHARD_NAME = "tokens-{:05d}.bin"
BATCH_DOCS = 512              # documents encoded together (one batch call, or one task of a worker)
BATCH_CHARS = 2_000_000       # ... or fewer when they are long, so a batch stays a few MB


class ShardError(ValueError):
    """A token-shard folder that cannot be used as it is: the message names the folder or file and what is wrong."""


@dataclass
class ShardInfo:
    file: str
    tokens: int
    documents: int
    sha256: str


# ---------------------------------------------------------------- the tokenizer's identity

def tokenizer_hash(tokenizer) -> str:
    """sha256 of the parts of tokenizer.json that decide the ids (model, added tokens, normalizer,
    pre-tokenizer), canonically serialised: a copy of the tokenizer saved into a checkpoint has the same hash,
    and per-call padding/truncation settings do not change it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        added = [(t["id"], t["content"], bool(t.get("special"))) for t in spec.get("added_tokens") or []]
        keep: Any = {"model": spec.get("model"), "added_tokens": sorted(added),
                     "normalizer": spec.get("normalizer"), "pre_tokenizer": spec.get("pre_tokenizer")}
    else:  # a slow (Python) tokenizer: its vocabulary is what we can compare
        keep = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(keep, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def end_of_text_id(tokenizer) -> int:
    """The document separator: our <|endoftext|>, else the tokenizer's eos (as pretraining packs texts)."""
    from .. import protocol

    eot = tokenizer.convert_tokens_to_ids(protocol.ENDOFTEXT)
    if eot is None or eot == tokenizer.unk_token_id:
        eot = tokenizer.eos_token_id
    if eot is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an eos token to separate documents")
    return int(eot)


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# ---------------------------------------------------------------- writing

def _batches(inputs: list[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for path in inputs:
        for text in read_texts(path):
            batch.append(text)
            chars += len(text)
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def encode_batch(tokenizer, texts: list[str], eot: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """One flat array of the texts' ids, each followed by `eot`, and the length of each (with its eot)."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    pos = 0
    for ids in encoded:
        flat[pos:pos + len(ids)] = ids
        flat[pos + len(ids)] = eot
        pos += len(ids) + 1
    return flat, lengths


_worker_state: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str) -> None:
    from ..tokenizer import load_any

    tok = load_any(tokenizer_dir)
    _worker_state.update(tokenizer=tok, eot=end_of_text_id(tok), dtype=dtype_for(len(tok)))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    s = _worker_state
    return encode_batch(s["tokenizer"], texts, s["eot"], s["dtype"])


class _ShardWriter:
    """Appends whole documents to the open shard's temp file; a shard closes at the first document boundary at
    or past `shard_tokens` and is renamed into place."""

    def __init__(self, out: Path, dtype: np.dtype, shard_tokens: int):
        self.out, self.dtype, self.shard_tokens = out, dtype, shard_tokens
        self.shards: list[ShardInfo] = []
        self._file = None
        self._tmp: Path | None = None

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        ends = np.cumsum(lengths)  # where each document of the batch ends in `flat`
        first, start = 0, 0
        while first < len(lengths):
            if self._file is None:
                self._open()
            # This shard takes documents up to the first one that ends at or past shard_tokens (whole documents).
            last = min(int(np.searchsorted(ends, start + self.shard_tokens - self._tokens)), len(lengths) - 1)
            piece = flat[start:int(ends[last])].tobytes()
            self._file.write(piece)
            self._sha.update(piece)
            self._tokens += int(ends[last]) - start
            self._documents += last + 1 - first
            first, start = last + 1, int(ends[last])
            if self._tokens >= self.shard_tokens:
                self._close()

    def _open(self) -> None:
        self._name = SHARD_NAME.format(len(self.shards))
        self._tmp = self.out / (self._name + ".tmp")
        self._file = open(self._tmp, "wb")
        self._sha = hashlib.sha256()
        self._tokens = self._documents = 0

    def _close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.out / self._name)
        self._tmp = None
        self.shards.append(ShardInfo(self._name, self._tokens, self._documents, self._sha.hexdigest()))

    def finish(self) -> list[ShardInfo]:
        if self._file is not None:
            self._close()
        return self.shards

    def abandon(self) -> None:
        """After an error: drop the half-written shard (a kill leaves its .tmp for the next run to remove)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)


def _encoded(tokenizer_dir: str, tokenizer, inputs: list[str], eot: int, dtype: np.dtype,
             workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encoded batches in input order; with workers > 1 at most 2 * workers batches are in flight."""
    if workers <= 1:
        for texts in _batches(inputs):
            yield encode_batch(tokenizer, texts, eot, dtype)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(tokenizer_dir,)) as pool:
        pending: deque[Future] = deque()
        for texts in _batches(inputs):
            pending.append(pool.submit(_encode_in_worker, texts))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tokenize_shards(tokenizer_dir: str, inputs: list[str], out: str, shard_tokens: int = 50_000_000,
                    workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Tokenize texts (cleaned-shard folders, JSONL with "text", .txt, conversation files) into token shards in
    `out`; returns the index (also written to out/index.json, last)."""
    from ..tokenizer import load_any

    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be at least 1, got {shard_tokens}")
    for path in inputs:
        if not Path(path).exists():
            raise FileNotFoundError(f"input not found: {path}")
    tokenizer = load_any(tokenizer_dir)
    eot, vocab = end_of_text_id(tokenizer), len(tokenizer)
    dtype = dtype_for(vocab)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # The old index goes first: until the new one is written, the folder is refused as unfinished.
    (folder / INDEX).unlink(missing_ok=True)
    for leftover in folder.glob("*.tmp"):
        leftover.unlink()
    writer = _ShardWriter(folder, dtype, shard_tokens)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(desc="tokenize", unit="doc", dynamic_ncols=True, file=sys.stderr)
    started = time.time()
    tokens = 0
    try:
        for flat, lengths in _encoded(tokenizer_dir, tokenizer, inputs, eot, dtype, workers):
            writer.add(flat, lengths)
            tokens += len(flat)
            if bar is not None:
                bar.update(len(lengths))
                bar.set_postfix(tokens=tokens, shards=len(writer.shards), refresh=False)
        shards = writer.finish()
    except BaseException:
        writer.abandon()
        raise
    finally:
        if bar is not None:
            bar.close()
    if not shards:
        raise ValueError(f"no text found in {inputs}")
    names = {s.file for s in shards}
    for stale in folder.glob("tokens-*.bin"):  # shards of an earlier, longer run into the same folder
        if stale.name not in names:
            stale.unlink()
    index = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "eot_id": eot,
             "tokenizer": {"vocab_size": vocab, "sha256": tokenizer_hash(tokenizer), "source": str(tokenizer_dir)},
             "tokens": sum(s.tokens for s in shards), "documents": sum(s.documents for s in shards),
             "inputs": [str(p) for p in inputs], "seconds": round(time.time() - started, 2),
             "shards": [asdict(s) for s in shards]}
    _write_json_atomic(folder / INDEX, index)
    return index


# ---------------------------------------------------------------- reading

def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


class TokenShards:
    """A token-shard folder, checked on load: the index, each file's presence and size, its dtype and final
    end-of-text token; with `verify` each sha256; with `tokenizer` that it is the tokenizer the shards were
    made with. Shards are memory-mapped on first use."""

    def __init__(self, folder: str | Path, tokenizer=None, verify: bool = False):
        self.folder = Path(folder)
        index = self._read_index()
        try:
            self.dtype = np.dtype(index["dtype"])
            self.eot_id = int(index["eot_id"])
            self.vocab_size = int(index["tokenizer"]["vocab_size"])
            self.tokenizer_sha256 = str(index["tokenizer"]["sha256"])
            self.shards = [ShardInfo(str(s["file"]), int(s["tokens"]), int(s["documents"]), str(s["sha256"]))
                           for s in index["shards"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{self.folder / INDEX}: incomplete index ({type(e).__name__}: {e})") from None
        self._arrays: dict[int, np.memmap] = {}
        self._ends: dict[int, list[int]] = {}  # per window width: cumulative windows, shard by shard
        for i, shard in enumerate(self.shards):
            self._check_shard(i, shard, verify)
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)

    def _read_index(self) -> dict[str, Any]:
        path = self.folder / INDEX
        if not self.folder.is_dir():
            raise ShardError(f"{self.folder}: no such token-shard folder")
        if not path.is_file():
            leftovers = sorted(p.name for p in self.folder.glob("*.tmp"))
            hint = f" (temp files {', '.join(leftovers[:3])} are left: a run was killed)" if leftovers else ""
            raise ShardError(f"{self.folder}: no {INDEX}: not a token-shard folder, or `moss data tokenize` did "
                             f"not finish{hint}; run it again")
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ShardError(f"{path}: not a {FORMAT} index")
        if index.get("version") != VERSION:
            raise ShardError(f"{path}: format version {index.get('version')!r}; this mosslm reads {VERSION}")
        if index.get("dtype") not in ("uint16", "uint32"):
            raise ShardError(f"{path}: dtype {index.get('dtype')!r}; expected uint16 or uint32")
        if not isinstance(index.get("shards"), list) or not index["shards"]:
            raise ShardError(f"{path}: lists no shards")
        return index

    def _check_shard(self, i: int, shard: ShardInfo, verify: bool) -> None:
        path = self.folder / shard.file
        if not path.is_file():
            raise ShardError(f"{path}: missing (listed in {self.folder / INDEX})")
        expected = shard.tokens * self.dtype.itemsize
        size = path.stat().st_size
        if size != expected:
            raise ShardError(f"{path}: {size} bytes, but the index lists {shard.tokens} {self.dtype.name} tokens "
                             f"({expected} bytes): truncated or overwritten; run `moss data tokenize` again")
        if verify:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
            if digest.hexdigest() != shard.sha256:
                raise ShardError(f"{path}: sha256 does not match the index: the file is corrupted")
        if shard.tokens and int(self.array(i)[-1]) != self.eot_id:
            raise ShardError(f"{path}: does not end with the end-of-text token {self.eot_id}: corrupted")

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one the shards were made with (ids would mean other tokens)."""
        if len(tokenizer) != self.vocab_size:
            raise ShardError(f"{self.folder}: tokenized with a {self.vocab_size}-token vocabulary, but this "
                             f"tokenizer has {len(tokenizer)} tokens; tokenize again with it")
        if tokenizer_hash(tokenizer) != self.tokenizer_sha256:
            raise ShardError(f"{self.folder}: tokenized with another tokenizer (its hash differs, same vocabulary "
                             f"size {self.vocab_size}); tokenize again with this one")

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    def array(self, i: int) -> np.memmap:
        """Shard i's tokens, memory-mapped read-only."""
        if i not in self._arrays:
            self._arrays[i] = np.memmap(self.folder / self.shards[i].file, dtype=self.dtype, mode="r")
        return self._arrays[i]

    def windows(self, seq_len: int) -> int:
        """How many consecutive seq_len + 1 windows the shards hold (each shard's tail is left out)."""
        return sum(s.tokens // (seq_len + 1) for s in self.shards)

    def window(self, index: int, seq_len: int) -> np.ndarray:
        """Window `index` of `windows(seq_len)`: shard by shard, consecutive rows of seq_len + 1 tokens."""
        width = seq_len + 1
        if width not in self._ends:
            self._ends[width] = np.cumsum([s.tokens // width for s in self.shards]).tolist()
        ends = self._ends[width]
        if not 0 <= index < ends[-1]:
            raise IndexError(f"window {index} of {ends[-1]}")
        shard = bisect.bisect_right(ends, index)
        row = index - (ends[shard - 1] if shard else 0)
        return np.asarray(self.array(shard)[row * width:(row + 1) * width])


# ---------------------------------------------------------------- CLI

def add_tokenize_parser(data_verbs: Any) -> None:
    """`moss data tokenize` on the `moss data` subparsers."""
    tok = data_verbs.add_parser(
        "tokenize", help="tokenize cleaned text into memory-mapped token shards",
        description="Tokenize cleaned shards (`moss data clean --out DIR`), JSONL with 'text' or .txt files into "
                    "token shards (tokens-00000.bin ..., documents separated by the end-of-text token) and an "
                    "index.json, all written atomically; `moss train pretrain train=OUT` reads them directly.")
    tok.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer or checkpoint folder")
    tok.add_argument("--in", dest="inputs", nargs="+", required=True, metavar="DIR_OR_FILE",
                     help="a cleaned-shard folder, a .jsonl with 'text', a .txt, or conversation files")
    tok.add_argument("--out", required=True, metavar="DIR", help="the token-shard folder to write")
    tok.add_argument("--shard-tokens", type=int, default=50_000_000, metavar="N",
                     help="tokens per shard (a shard ends at the first document boundary past N; default 50M)")
    tok.add_argument("--workers", type=int, default=1, help="processes that encode in parallel (default 1)")
    tok.add_argument("--no-progress", action="store_true", help="no progress bar")
    tok.set_defaults(func=cmd_data_tokenize)


def cmd_data_tokenize(args: argparse.Namespace) -> int:
    try:
        index = tokenize_shards(args.tokenizer, args.inputs, args.out, shard_tokens=args.shard_tokens,
                                workers=args.workers, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"moss data tokenize: {e}", file=sys.stderr)
        return 1
    rate = index["tokens"] / max(1e-9, index["seconds"])
    print(f"{args.out}: {index['tokens']:,} tokens, {index['documents']:,} documents in {len(index['shards'])} "
          f"{index['dtype']} shards ({rate:,.0f} tokens/s)")
    return 0
