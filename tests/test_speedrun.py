"""`moss speedrun --preset micro`: the whole road, corpus to chat, in the test suite."""

import json
import os
import subprocess
import sys
import time

from mosslm.paths import default_model_dir


def test_micro_speedrun_end_to_end(tmp_path):
    env = {**os.environ, "MOSSLM_HOME": str(tmp_path / "home")}
    out = tmp_path / "run"
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "mosslm", "speedrun", "--preset", "micro", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 120, f"micro speedrun took {elapsed:.0f}s"
    for name in ("data/sft_train.jsonl", "data/eval.jsonl", "tokenizer/tokenizer.json", "pretrain/final/config.json",
                 "sft/final/model.safetensors", "pretrain/loss.png", "sft/loss.png", "eval.json", "report.md"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    for needle in ("## Timings", "## Quick eval", "calculate_well_formed", "names_moss_in_language",
                   "![sft loss](sft/loss.png)", "## Sample dialogues", "<|Human|>:"):
        assert needle in report, needle
    # The report card: a PNG the report shows, over the same numbers as eval.json
    assert "![report card](card/card.png)" in report
    assert (out / "card" / "card.png").read_bytes()[:4] == b"\x89PNG"
    card = json.loads((out / "card" / "results.json").read_text())["tools"]
    evaluation = json.loads((out / "eval.json").read_text())
    assert card["arithmetic/calculate_well_formed"] == evaluation["metrics"]["arithmetic"]["calculate_well_formed"]
    assert set(evaluation["metrics"]) == {"arithmetic", "identity", "refusal", "benign"}
    # The precision `dtype: auto` picked for each stage is in its checkpoint and, word for word, in the report.
    for stage in ("pretrain", "sft"):
        meta = json.loads((out / stage / "final" / "mosslm.json").read_text())
        assert meta["train_dtype"] in ("fp32", "bf16")
        assert meta["train_dtype_choice"].startswith(f"dtype auto -> {meta['train_dtype']}: ")
        assert f"- precision: {meta['train_dtype_choice']}" in report
    assert evaluation["dtype_choice"].startswith(f"dtype auto -> {evaluation['dtype']}: ")
    assert f"- precision: {evaluation['dtype_choice']}" in report
    # The result became the default model: plain `moss chat` uses it, with the Calculate plugin on.
    os.environ["MOSSLM_HOME"] = env["MOSSLM_HOME"]
    try:
        home_model = default_model_dir()
    finally:
        del os.environ["MOSSLM_HOME"]
    assert json.loads((home_model / "mosslm.json").read_text())["plugins"] == ["Calculate"]
    chat = subprocess.run([sys.executable, "-m", "mosslm", "chat", "--message", "你好", "--max-new-tokens", "8",
                           "--show-protocol", "--temperature", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert str(home_model) in chat.stderr and "<|Inner Thoughts|>:" in chat.stdout
