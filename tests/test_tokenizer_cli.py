"""`moss tokenizer train` and `moss tokenizer eval`."""

import json

from conftest import bilingual_corpus
from mosslm.cli import main


def test_tokenizer_train_and_eval_table(tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in bilingual_corpus(300)),
                     encoding="utf-8")
    zh_en = tmp_path / "eval.txt"
    zh_en.write_text("这是一个用来评估分词器的中文段落。\n\nThis is an English paragraph for the tokenizer.\n",
                     encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(texts), "--vocab-size", "700", "--out", str(tmp_path / "a")]) == 0
    assert main(["tokenizer", "train", "--input", str(texts), "--vocab-size", "400", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "eval", "--tokenizer", str(tmp_path / "a"), "--compare", str(tmp_path / "b"),
                 "--text", str(zh_en)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["a", "b"]
    zh = lines.index("Chinese (1 texts)")
    assert "English (1 texts)" in lines
    # Bigger vocabulary -> at least as many bytes per token.
    zh_row = lines[zh + 1].split()
    assert zh_row[0] == "bytes_per_token"
    assert float(zh_row[-2]) >= float(zh_row[-1])


def test_tokenizer_train_errors(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t")]) == 1
    assert "not found" in capsys.readouterr().err
