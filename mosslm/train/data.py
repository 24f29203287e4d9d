"""Training data: packed token sequences (pretrain: text files packed here, or token-shard folders read
memory-mapped) and masked conversations (sft).

The order of examples is a pure function of (seed, step), so a resumed or
multi-process run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from .. import protocol
from ..data.conversations import read_file
from ..data.shards import ShardError, TokenShards, end_of_text_id, is_shard_folder
from ..data.text import read_texts

IGNORE = -100


def pack_texts(paths: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Concatenate texts separated by the end-of-text token; cut rows of seq_len + 1."""
    eos = end_of_text_id(tokenizer)
    stream: list[int] = []
    for path in paths:
        texts = list(read_texts(path))
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    rows = len(stream) // (seq_len + 1)
    if rows == 0:
        raise ValueError(f"not enough text in {paths} for one sequence of {seq_len + 1} tokens")
    return torch.tensor(stream[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


@dataclass
class SftExample:
    input_ids: list[int]
    labels: list[int]


def conversation_example(conv: protocol.Conversation, tokenizer, loss_on: list[str],
                         seq_len: int) -> SftExample | None:
    """Tokenize a conversation; labels are IGNORE outside the parts in loss_on."""
    segments = conv.segments()
    text = "".join(t for t, _ in segments)
    starts, parts, pos = [], [], 0
    for seg_text, part in segments:
        starts.append(pos)
        parts.append(part)
        pos += len(seg_text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for token, (begin, end) in zip(ids, enc["offset_mapping"]):
        part = parts[bisect.bisect_right(starts, begin) - 1]
        labels.append(token if part in loss_on else IGNORE)
    ids, labels = ids[: seq_len + 1], labels[: seq_len + 1]
    if all(label == IGNORE for label in labels[1:]):
        return None  # nothing left to learn after truncation
    return SftExample(ids, labels)


def sft_examples(paths: list[str], tokenizer, loss_on: list[str], seq_len: int) -> list[SftExample]:
    examples = []
    for path in paths:
        for _, conv in read_file(path):
            example = conversation_example(conv, tokenizer, loss_on, seq_len)
            if example is not None:
                examples.append(example)
    if not examples:
        raise ValueError(f"no usable conversations in {paths}")
    return examples


class Dataset:
    """Indexable examples with a deterministic, epoch-shuffled order."""

    def __init__(self, rows: torch.Tensor | None = None, examples: list[SftExample] | None = None, seed: int = 0,
                 group: int = 0):
        self.rows, self.examples, self.seed = rows, examples, seed
        self.group = group if examples else 0  # > 0: length-grouped batches of this many examples
        self._order: dict[int, torch.Tensor] = {}
        # Tokens that carry loss (labels shifted by one), counted once per example.
        self._targets = [sum(1 for label in e.labels[1:] if label != IGNORE) for e in examples] if examples else []

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.examples)

    def index(self, position: int) -> int:
        """The example at a position of the endless shuffled stream."""
        epoch, offset = divmod(position, len(self))
        if epoch not in self._order:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self), generator=g)
            self._order = {epoch: self._grouped(order, g) if self.group else order}
        return int(self._order[epoch][offset])

    def _grouped(self, order: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Sort windows of 4 batches by length, cut them into batches, shuffle the batches.

        SFT batches are padded to their longest conversation; with a few long
        ones (Search results) in the mix, random batches waste most of their
        compute on padding. Small windows keep each batch a mix of tasks, as
        random batches are. The order stays a pure function of (seed, epoch).
        """
        window = self.group * 4
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window].tolist(), key=lambda i: len(self.examples[i].input_ids))
            batches += [part[i:i + self.group] for i in range(0, len(part), self.group)]
        full = [b for b in batches if len(b) == self.group]
        ragged = [i for b in batches if len(b) != self.group for i in b]  # at most a few: last
        shuffled = [full[int(k)] for k in torch.randperm(len(full), generator=g)]
        return torch.tensor([i for b in shuffled for i in b] + ragged, dtype=torch.long)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), right-padded; causal attention never looks at the pads."""
        if self.rows is not None:
            x = self.rows[indices]
            return x, x.clone()
        items = [self.examples[i] for i in indices]
        width = max(len(e.input_ids) for e in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, e in enumerate(items):
            ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[row, : len(e.labels)] = torch.tensor(e.labels)
        return ids, labels

    def target_count(self, indices: list[int]) -> int:
        """Tokens that carry loss (labels shifted by one) in these examples."""
        if self.rows is not None:
            return len(indices) * (self.rows.shape[1] - 1)
        return sum(self._targets[i] for i in indices)


class ShardRows:
    """Pretraining rows read from token-shard folders (`moss data tokenize`), memory-mapped: row i is window i
    of seq_len + 1 consecutive tokens, folder after folder; indexed like the packed tensor of pack_texts."""

    def __init__(self, folders: list[TokenShards], seq_len: int):
        self.folders, self.seq_len = folders, seq_len
        self._ends = np.cumsum([f.windows(seq_len) for f in folders]).tolist()
        self.shape = (self._ends[-1] if folders else 0, seq_len + 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        rows = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for k, i in enumerate(indices):
            folder = bisect.bisect_right(self._ends, i)
            rows[k] = self.folders[folder].window(i - (self._ends[folder - 1] if folder else 0), self.seq_len)
        return torch.from_numpy(rows)


def shard_rows(paths: list[str], tokenizer, seq_len: int) -> ShardRows:
    """Token-shard folders, each validated with the run's tokenizer (sizes, checksums, vocabulary, hash)."""
    folders = [TokenShards(p, tokenizer=tokenizer, verify=True) for p in paths]
    rows = ShardRows(folders, seq_len)
    if len(rows) == 0:
        raise ShardError(f"not enough tokens in {paths} for one sequence of {seq_len + 1} tokens")
    return rows


def load_dataset(cfg, paths: list[str], tokenizer, seed: int) -> Dataset:
    if cfg.stage == "pretrain":
        shard_folders = [p for p in paths if is_shard_folder(p)]
        if shard_folders and len(shard_folders) != len(paths):
            others = [p for p in paths if p not in shard_folders]
            raise ValueError(f"train/val data mixes token-shard folders {shard_folders} with text files {others}; "
                             f"tokenize the text with `moss data tokenize` and give only shard folders")
        if shard_folders:
            return Dataset(rows=shard_rows(paths, tokenizer, cfg.seq_len), seed=seed)
        return Dataset(rows=pack_texts(paths, tokenizer, cfg.seq_len), seed=seed)
    return Dataset(examples=sft_examples(paths, tokenizer, cfg.loss_on, cfg.seq_len), seed=seed,
                   group=cfg.batch_size if cfg.group_by_length else 0)
