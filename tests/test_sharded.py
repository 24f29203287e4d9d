"""Sharded training under torchrun on CPU (gloo): FSDP2 and DeepSpeed ZeRO-2 match one process,
write plain HF folders, and resume after a SIGKILL with the same losses."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mosslm.data.synth import generate_corpus
from mosslm.tokenizer import train_from_files
from mosslm.train.config import load_config
from mosslm.train.loop import read_metrics, train

# fp32 everywhere: the sharded runs differ from one process only in float summation order
# (gradient reduce-scatter, flat ZeRO partitions); measured differences are ~1e-6.
LOSS_TOLERANCE = 1e-4
STEPS, SAVE_EVERY = 8, 4
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
STRATEGIES = ["fsdp", pytest.param("zero2", marks=pytest.mark.skipif(
    not HAS_DEEPSPEED, reason="DeepSpeed is not installed (pip install 'mosslm[deepspeed]')"))]
_PORTS = iter(range(29641, 29700))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    generate_corpus(root / "data", seed=3, scale=0.03)
    train_from_files([str(root / "data" / "pretrain.jsonl"), str(root / "data" / "sft_train.jsonl")],
                     600, str(root / "tok"), show_progress=False)
    return root


def args(corpus: Path, out: Path) -> list[str]:
    data = corpus / "data"
    # 8 sequences per step: 4 per rank in 2 micro-batches, so accumulation (no_sync / DeepSpeed's) is exercised.
    return [f"tokenizer={corpus / 'tok'}", f"train={data / 'sft_train.jsonl'}", f"val={data / 'sft_val.jsonl'}",
            "preset=micro", "seq_len=128", "batch_size=8", "micro_batch_size=2", f"max_steps={STEPS}",
            f"save_every={SAVE_EVERY}", "eval_every=100", "eval_batches=2", "log_every=4", "dtype=fp32",
            "progress=false", "lr=0.003", "warmup_steps=2", f"out={out}"]


@pytest.fixture(scope="module")
def reference(corpus):
    """One uninterrupted 1-process run that every sharded run is compared with."""
    out = corpus / "single"
    final = train(load_config(None, args(corpus, out), stage="sft"))
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")], final


def torchrun(strategy: str, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(next(_PORTS)), "-m", "mosslm", "train", "sft", *extra, *args(corpus, out), f"strategy={strategy}"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def assert_close(got: list[float], want: list[float], steps: int = STEPS) -> None:
    assert len(got) == len(want) == steps
    worst = max(abs(a - b) for a, b in zip(got, want))
    assert worst < LOSS_TOLERANCE, (worst, got, want)


def logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(5, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharded_run_matches_one_process_survives_a_kill_and_saves_plain_hf_folders(strategy, corpus, reference,
                                                                                  tmp_path):
    expected, single_final = reference
    out = tmp_path / strategy
    checkpoint = out / "checkpoints" / f"step_{SAVE_EVERY:07d}"
    # A new session: the kill reaches torchrun and both workers, as a crashed node would.
    proc = subprocess.Popen(torchrun(strategy, corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "killed before its first checkpoint"
    assert not (out / "final").exists(), "the run finished before the kill"
    # Steps before the kill come from an uninterrupted sharded run.
    assert_close(losses(out)[:SAVE_EVERY], expected[:SAVE_EVERY], steps=SAVE_EVERY)

    result = subprocess.run(torchrun(strategy, corpus, out, "--resume"), capture_output=True, text=True,
                            timeout=240, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(step {SAVE_EVERY})" in result.stdout
    assert_close(losses(out), expected)  # the whole curve, across the kill

    # The periodic checkpoint's model/ and final/ are ordinary HF folders with full weights.
    single_checkpoint = single_final.parent / "checkpoints" / f"step_{SAVE_EVERY:07d}" / "model"
    for folder, trained in ((checkpoint / "model", single_checkpoint), (out / "final", single_final)):
        assert (folder / "model.safetensors").exists() and not list(folder.glob("*.pt"))
        got, want = logits(folder), logits(trained)
        assert got.shape[:2] == (2, 24)
        # Same training as the 1-process run, so the gathered weights give its logits.
        assert torch.allclose(got, want, atol=1e-3), (folder, (got - want).abs().max())


def test_deepspeed_config_is_ours_with_user_keys_merged_over_it(corpus):
    from mosslm.train.sharding import deepspeed_config

    cfg = load_config(None, args(corpus, corpus / "unused") + [
        "strategy=zero3", "grad_clip=0.5", 'deepspeed={"zero_optimization": {"overlap_comm": true}}'])
    config = deepspeed_config(cfg, micro=2, accumulation=2, bf16=True)
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": True}


def test_lora_with_a_sharded_strategy_and_missing_deepspeed_are_clear_errors(corpus):
    from mosslm.train.sharding import wrap

    cfg = load_config(None, args(corpus, corpus / "unused") + ["strategy=fsdp", "lora_r=8"])
    with pytest.raises(ValueError, match="strategy fsdp with lora_r > 0 is not supported yet"):
        wrap(cfg, None, None, rank=0, micro=2, accumulation=2, bf16=False)
    # A Python where `import deepspeed` fails (None in sys.modules is how Python marks a missing module).
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "from mosslm.train.sharding import import_deepspeed\n"
            "try:\n    import_deepspeed('zero2')\nexcept ValueError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "strategy=zero2 needs DeepSpeed: pip install 'mosslm[deepspeed]'" in result.stdout, result.stderr
