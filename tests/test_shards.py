"""Token shards: `moss data tokenize` writes memory-mapped shards atomically, they are validated on load, and
`moss train pretrain` and `moss tokenizer train` read cleaned or tokenized data directly."""

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mosslm.data import text as text_module
from mosslm.data.shards import ShardError, TokenShards, add_tokenize_parser, tokenize_shards
from mosslm.data.text import read_texts
from mosslm.train.data import pack_texts, shard_rows

ZH = ["北京是中国的首都。", "今天天气很好，我们去公园散步。", "语言模型预测下一个词。", "数学和编程都很重要。",
      "谢谢你的帮助！", "这个问题很有意思。"]
EN = ["Paris is the capital of France.", "The weather is nice today.", "Language models predict the next token.",
      "Thanks for your help!", "Reading books is a good habit."]


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [rng.choice(ZH if rng.random() < 0.5 else EN) for _ in range(rng.randint(1, 4))]
        docs.append("\n".join(lines) + f" {i}")
    return docs


def record(i: int, text: str) -> str:
    return json.dumps({"id": f"page.html:{i}", "source": "page.html", "url": None, "lang": "zh", "lang_score": 0.9,
                       "text": text, "signals": {"chars": len(text)}}, ensure_ascii=False) + "\n"


def write_cleaned(root: Path, docs: list[str]) -> Path:
    """The layout `moss data clean --out root` writes: data/ shards (plain and gzipped), explain/ samples."""
    half = len(docs) // 2
    (root / "data").mkdir(parents=True)
    (root / "data" / "part-aaa.jsonl").write_text("".join(record(i, t) for i, t in enumerate(docs[:half])),
                                                  encoding="utf-8")
    with gzip.open(root / "data" / "part-bbb.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(record(half + i, t) for i, t in enumerate(docs[half:])))
    (root / "explain").mkdir()
    (root / "explain" / "part-aaa.jsonl").write_text(
        json.dumps({"kind": "dropped", "rule": "quality.min_chars", "text": "DROPPED TEXT"}) + "\n")
    (root / "report.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return documents(300)


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory, docs) -> Path:
    return write_cleaned(tmp_path_factory.mktemp("clean"), docs)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tok_dir, cleaned) -> Path:
    out = tmp_path_factory.mktemp("shards")
    tokenize_shards(str(tok_dir), [str(cleaned)], str(out), shard_tokens=1500, progress=False)
    return out


def test_read_texts_streams_cleaned_shards_in_order_and_never_the_explain_samples(cleaned, docs, tmp_path):
    assert list(read_texts(cleaned)) == docs  # data/part-aaa.jsonl, then part-bbb.jsonl.gz
    assert list(read_texts(cleaned / "data")) == docs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text(record(0, "fine") + '{"id": "x", "lang": "en"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.jsonl:2: expected a JSON object with a 'text' string"):
        list(read_texts(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .jsonl or .jsonl.gz files"):
        list(read_texts(empty))


def test_txt_blocks_read_in_small_chunks_cut_as_the_whole_file_would(tmp_path, monkeypatch):
    raw = "first\nblock\n\n\n  second  \n\nthird\n \n still third\n\n\n\nlast"
    path = tmp_path / "t.txt"
    path.write_text(raw, encoding="utf-8")
    whole = [b.strip() + "\n" for b in raw.split("\n\n") if b.strip()]
    monkeypatch.setattr(text_module, "_CHUNK", 3)  # separators straddle chunk boundaries
    assert list(read_texts(path)) == whole


def test_shards_hold_exactly_the_packed_token_stream(shards, tok, cleaned, docs):
    data = TokenShards(shards, tokenizer=tok, verify=True)
    index = json.loads((shards / "index.json").read_text())
    assert index["dtype"] == "uint16" and data.dtype == np.uint16  # a 600-token vocabulary fits
    assert index["tokenizer"]["vocab_size"] == len(tok)
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert data.eot_id == eot
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    assert data.tokens == sum(len(i) + 1 for i in ids) and data.documents == len(docs)
    assert len(data) > 3  # several shards, each closed at the first document boundary past 1500 tokens
    for i, shard in enumerate(data.shards):
        arr = data.array(i)
        assert isinstance(arr, np.memmap) and arr[-1] == eot
        assert int((arr == eot).sum()) == shard.documents
        if i < len(data) - 1:
            assert 1500 <= shard.tokens < 1500 + max(map(len, ids)) + 1
    stream = np.concatenate([data.array(i) for i in range(len(data))])
    assert stream.tolist() == [t for doc in ids for t in [*doc, eot]]
    # Windows run shard by shard; within a shard they are the rows pack_texts cuts from the same folder.
    seq_len = 31
    rows = shard_rows([str(shards)], tok, seq_len)
    assert len(rows) == data.windows(seq_len) == sum(s.tokens // 32 for s in data.shards)
    first_shard_rows = data.shards[0].tokens // 32
    packed = pack_texts([str(cleaned)], tok, seq_len)
    assert torch.equal(rows[list(range(first_shard_rows))], packed[:first_shard_rows])


def test_one_shard_equals_pack_texts_and_workers_write_identical_bytes(tmp_path, tok_dir, tok, cleaned):
    one = tmp_path / "one"
    index = tokenize_shards(str(tok_dir), [str(cleaned)], str(one), progress=False)
    assert len(index["shards"]) == 1
    rows = shard_rows([str(one)], tok, 47)
    assert torch.equal(rows[list(range(len(rows)))], pack_texts([str(cleaned)], tok, 47))
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    tokenize_shards(str(tok_dir), [str(cleaned)], str(serial), shard_tokens=700, progress=False)
    tokenize_shards(str(tok_dir), [str(cleaned)], str(parallel), shard_tokens=700, workers=2, progress=False)
    names = sorted(p.name for p in serial.glob("tokens-*.bin"))
    assert len(names) > 5 and names == sorted(p.name for p in parallel.glob("tokens-*.bin"))
    for name in names:
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_truncated_corrupted_or_missing_shards_are_refused(shards, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(shards, broken)
    victim = broken / "tokens-00001.bin"
    good = victim.read_bytes()

    victim.write_bytes(good[:-2])  # one uint16 token short
    with pytest.raises(ShardError, match=r"tokens-00001\.bin: \d+ bytes, but the index lists .*truncated"):
        TokenShards(broken)

    flipped = bytearray(good)
    flipped[10] ^= 0xFF
    victim.write_bytes(bytes(flipped))
    TokenShards(broken)  # sizes alone cannot see a flipped byte ...
    with pytest.raises(ShardError, match=r"tokens-00001\.bin: sha256 does not match the index"):
        TokenShards(broken, verify=True)  # ... the checksums do

    victim.unlink()
    with pytest.raises(ShardError, match=r"tokens-00001\.bin: missing"):
        TokenShards(broken)

    victim.write_bytes(good)
    TokenShards(broken, verify=True)
    (broken / "index.json").write_text('{"format": "mosslm-token-shards", "version": 1, "dtype": "int8"}')
    with pytest.raises(ShardError, match="dtype 'int8'"):
        TokenShards(broken)
    (broken / "index.json").write_text("{not json")
    with pytest.raises(ShardError, match="index.json: not valid JSON"):
        TokenShards(broken)
    (broken / "index.json").unlink()
    with pytest.raises(ShardError, match="no index.json"):
        TokenShards(broken)


def test_another_tokenizer_is_refused_and_a_saved_copy_accepted(shards, tok, tok_dir, tmp_path):
    from transformers import AutoTokenizer

    from mosslm.tokenizer import train_tokenizer

    smaller = train_tokenizer(documents(200, seed=5), vocab_size=400)
    with pytest.raises(ShardError, match=r"-token vocabulary, but this tokenizer has \d+ tokens"):
        TokenShards(shards, tokenizer=smaller)
    # Same size, two ids swapped: every size check passes, the hash does not.
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    a, b = "a", "b"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped_dir = tmp_path / "swapped"
    shutil.copytree(tok_dir, swapped_dir)
    (swapped_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    swapped = AutoTokenizer.from_pretrained(swapped_dir)
    assert len(swapped) == len(tok)
    with pytest.raises(ShardError, match="tokenized with another tokenizer"):
        TokenShards(shards, tokenizer=swapped)
    with pytest.raises(ShardError, match="another tokenizer"):
        shard_rows([str(shards)], swapped, 31)  # what `moss train pretrain` runs on load
    copy_dir = tmp_path / "copy"  # as a checkpoint saves its tokenizer
    tok.save_pretrained(copy_dir)
    TokenShards(shards, tokenizer=AutoTokenizer.from_pretrained(copy_dir))


def test_killed_run_leaves_finished_shards_and_temp_files_only(tmp_path, tok_dir, docs):
    src = tmp_path / "in"
    src.mkdir()
    many = documents(1500, seed=1)
    (src / "a.jsonl").write_text("".join(record(i, t) for i, t in enumerate(many)), encoding="utf-8")
    out = tmp_path / "out"
    tokenize_shards(str(tok_dir), [str(src)], str(out), shard_tokens=800, progress=False)  # an earlier run
    assert len(list(out.glob("tokens-*.bin"))) > 8
    fifo = src / "b.jsonl"
    os.mkfifo(fifo)  # the killed run blocks reading it, after a.jsonl: still running when killed
    code = (f"from mosslm.data.shards import tokenize_shards; "
            f"tokenize_shards({str(tok_dir)!r}, [{str(src)!r}], {str(out)!r}, shard_tokens=3000, progress=False)")
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writer = None
    deadline = time.time() + 90
    while writer is None and time.time() < deadline and proc.poll() is None:
        try:  # succeeds once the run has opened b.jsonl: a.jsonl's full batches are encoded and written
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    errors = proc.stderr.read().decode()
    proc.stderr.close()
    assert writer is not None and alive, errors[-2000:]
    os.close(writer)
    with pytest.raises(ShardError, match="no index.json.*did not finish"):
        TokenShards(out)  # the earlier run's index went first: its shards and the new ones never mix
    assert all(p.name.startswith("tokens-") and p.suffix in (".bin", ".tmp") for p in out.iterdir())
    finished = {p.name: p.read_bytes() for p in out.glob("tokens-*.bin") if p.stat().st_mtime >= started}
    assert len(finished) >= 5, sorted(finished)
    fifo.unlink()
    fifo.write_text(record(9999, "最后一篇。The last one."), encoding="utf-8")
    index = tokenize_shards(str(tok_dir), [str(src)], str(out), shard_tokens=3000, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([s["file"] for s in index["shards"]] + ["index.json"])
    for name, content in finished.items():  # what the killed run finished is exactly what a full run writes
        assert (out / name).read_bytes() == content
    assert TokenShards(out, verify=True).documents == len(many) + 1


def test_pretrain_on_shards_loss_falls_and_resume_is_exact(shards, tok_dir, tmp_path):
    from mosslm.train.config import load_config
    from mosslm.train.loop import read_metrics, train

    def args(out, steps):
        return [f"tokenizer={tok_dir}", f"train={shards}", f"val={shards}", "preset=micro", "seq_len=63",
                "batch_size=8", "micro_batch_size=8", f"max_steps={steps}", "save_every=4", "eval_every=6",
                "eval_batches=2", "log_every=4", "dtype=fp32", "progress=false", "lr=0.003", "warmup_steps=3",
                f"out={out}"]

    train(load_config(None, args(tmp_path / "run", 12), stage="pretrain"))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 12
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first * 0.8, (first, last)
    assert any(r.get("val_loss") for r in rows)
    # Killed after step 6 (last checkpoint: step 4), resumed: the same batches, the same losses.
    train(load_config(None, args(tmp_path / "killed", 12), stage="pretrain"), stop_after=6)
    train(load_config(None, args(tmp_path / "killed", 12), stage="pretrain"), resume=True)
    assert [r["loss"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == [r["loss"] for r in rows]


def test_tokenize_command_and_tokenizer_training_on_a_shard_folder(cleaned, tok_dir, tmp_path, capsys):
    from mosslm.cli import main

    parser = argparse.ArgumentParser()
    add_tokenize_parser(parser.add_subparsers())
    out = tmp_path / "tokens"
    args = parser.parse_args(["tokenize", "--tokenizer", str(tok_dir), "--in", str(cleaned), "--out", str(out),
                              "--shard-tokens", "2000", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"{out}: " in printed and "300 documents" in printed and "uint16 shards" in printed
    args = parser.parse_args(["tokenize", "--tokenizer", str(tok_dir), "--in", str(tmp_path / "nowhere"),
                              "--out", str(tmp_path / "t2"), "--no-progress"])
    assert args.func(args) == 1
    assert "moss data tokenize: input not found" in capsys.readouterr().err

    assert main(["tokenizer", "train", "--input", str(cleaned), "--vocab-size", "500",
                 "--out", str(tmp_path / "tok")]) == 0
    from transformers import AutoTokenizer

    trained = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert 400 < len(trained) <= 500
    # It learned the shards' text: a frequent sentence takes far fewer tokens than its UTF-8 bytes.
    sentence = "今天天气很好，我们去公园散步。"
    assert len(trained.encode(sentence, add_special_tokens=False)) <= len(sentence.encode()) / 4
