"""The trainer: loss falls, kill + resume is exact, DDP matches one process, bad checkpoints are refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mosslm.data.synth import generate_corpus
from mosslm.model import CheckpointError, load
from mosslm.tokenizer import train_from_files
from mosslm.train.config import load_config
from mosslm.train.loop import read_metrics, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root / "data", seed=3, scale=0.03)
    train_from_files([str(root / "data" / "pretrain.jsonl"), str(root / "data" / "sft_train.jsonl")],
                     600, str(root / "tok"), show_progress=False)
    return root


def base_args(corpus, out, stage="sft", steps=24):
    data = corpus / "data"
    train_file = data / ("sft_train.jsonl" if stage == "sft" else "pretrain.jsonl")
    return [f"tokenizer={corpus / 'tok'}", f"train={train_file}", f"val={data / 'sft_val.jsonl'}",
            "preset=micro", "seq_len=192", "batch_size=8", "micro_batch_size=4", f"max_steps={steps}",
            "save_every=4", "eval_every=12", "log_every=4", "dtype=fp32", "progress=false", "lr=0.003",
            "warmup_steps=4", f"out={out}"]


def moss(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mosslm", *args], capture_output=True, text=True, timeout=300, **kw)


def test_loss_falls_and_final_checkpoint_loads(corpus, tmp_path):
    cfg = load_config(None, base_args(corpus, tmp_path / "run", stage="pretrain", steps=30), stage="pretrain")
    final = train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 30
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first * 0.8, (first, last)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    loaded = load(final)
    assert loaded.protocol == "mosslm"
    assert any(r.get("val_loss") for r in rows) and any(r.get("tokens_per_s") for r in rows)


def test_killed_run_resumes_exactly(corpus, tmp_path):
    reference = tmp_path / "reference"
    train(load_config(None, base_args(corpus, reference, steps=24), stage="sft"))
    expected = [r["loss"] for r in read_metrics(reference / "metrics.jsonl")]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mosslm", "train", "sft", *base_args(corpus, run, steps=24)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("step_0000008")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run / "checkpoints").glob("step_*")), "the run was killed before its first checkpoint"
    assert not (run / "final").exists()
    result = moss("train", "sft", "--resume", *base_args(corpus, run, steps=24))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    resumed = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert resumed == expected  # bit-exact at fp32


def test_two_process_torchrun_matches_one_process(corpus, tmp_path):
    single = tmp_path / "single"
    train(load_config(None, base_args(corpus, single, steps=12), stage="sft"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29533", "-m", "mosslm", "train", "sft",
                             *base_args(corpus, tmp_path / "ddp", steps=12)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    one = [r["loss"] for r in read_metrics(single / "metrics.jsonl")]
    two = [r["loss"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl")]
    assert len(one) == len(two) == 12
    # Same global batch, same data order: equal up to float summation order.
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4


def test_corrupt_or_truncated_checkpoints_are_refused(corpus, tmp_path):
    run = tmp_path / "run"
    train(load_config(None, base_args(corpus, run, steps=8), stage="sft"), stop_after=5)
    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    weights = ckpt / "model" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    result = moss("train", "sft", "--resume", *base_args(corpus, run, steps=8))
    assert result.returncode == 1 and "truncated" in result.stderr
    weights.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    result = moss("train", "sft", "--resume", *base_args(corpus, run, steps=8))
    assert result.returncode == 1 and "checksum" in result.stderr
    # A final model folder is verified by every loader of ours too.
    final = train(load_config(None, base_args(corpus, tmp_path / "ok", steps=2), stage="sft"))
    (final / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError, match="truncated"):
        load(final)


def test_sft_loss_mask_follows_the_setting(corpus):
    from transformers import AutoTokenizer

    from mosslm.data.conversations import read_file
    from mosslm.train.data import IGNORE, conversation_example

    tok = AutoTokenizer.from_pretrained(corpus / "tok")
    conv = next(c for _, c in read_file(corpus / "data" / "sft_train.jsonl") if c.turns[0].commands)
    default = conversation_example(conv, tok, ["thoughts", "commands", "reply"], 4096)
    learned = tok.decode([t for t, l in zip(default.input_ids, default.labels) if l != IGNORE])
    assert conv.turns[0].reply in learned and conv.turns[0].commands in learned
    assert conv.turns[0].human not in learned and "You are an AI assistant" not in learned
    assert "=> '" not in learned  # tool results carry no loss
    everything = conversation_example(conv, tok, ["meta", "human", "thoughts", "commands", "results", "reply"], 4096)
    assert sum(l != IGNORE for l in everything.labels) > sum(l != IGNORE for l in default.labels)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["nonsense=1", "train=x", "tokenizer=t"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [unclosed\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        load_config(None, ["train=x", "tokenizer=t", "batch_size=10", "micro_batch_size=4"])


def test_every_config_file_starts_with_its_command():
    configs = sorted((REPO / "mosslm" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# moss "), path
