"""`moss data check` and `moss data convert` on the real MOSS samples."""

import json

from conftest import sample_files
from mosslm.cli import main
from test_protocol import concat_fields


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_reports_300_conversations_and_no_errors(capsys):
    files = [str(p) for p in sample_files()]
    code, out, _ = run(capsys, "data", "check", *files)
    assert code == 0
    assert out.splitlines()[-1].startswith("checked 300 conversations in 3 files: 0 errors, 0 warnings; ")
    assert out.count("100 conversations (moss)") == 3


def test_check_reports_corruption_with_file_and_line(capsys, tmp_path):
    src = sample_files()[0]
    lines = src.read_text(encoding="utf-8").splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]                       # a truncated line
    rec = json.loads(lines[9]); rec["chat"]["turn_1"]["MOSS"] = rec["chat"]["turn_1"]["MOSS"].replace("<eom>", "")
    lines[9] = json.dumps(rec, ensure_ascii=False)                   # a missing <eom>
    rec = json.loads(lines[19]); rec["chat"]["turn_1"]["Assistant"] = "hi"
    lines[19] = json.dumps(rec, ensure_ascii=False)                  # an unknown field
    bad = tmp_path / "corrupt.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "data", "check", str(bad))
    assert code == 1
    assert f"{bad}:5: invalid JSON" in out
    assert f"{bad}:10: turn_1.MOSS is not of the form" in out and "<eom>" in out
    assert f"{bad}:20: turn_1 has unknown field(s): Assistant" in out
    assert out.splitlines()[-1].startswith("checked 100 conversations in 1 file: 3 errors, 0 warnings; ")


def test_check_json_list_and_other_formats(capsys, tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "robot", "content": "x"}]},
    ], ensure_ascii=False, indent=2), encoding="utf-8")
    code, out, _ = run(capsys, "data", "check", str(path))
    assert code == 1
    assert "unknown role 'robot'" in out and f"{path}:" in out
    assert out.splitlines()[-1].startswith("checked 3 conversations in 1 file: 1 errors, 0 warnings; ")


def test_convert_to_text_is_byte_exact_for_all_samples(capsys, tmp_path):
    files = sample_files()
    out_path = tmp_path / "text.jsonl"
    code, out, _ = run(capsys, "data", "convert", *map(str, files), "--to", "text", "--out", str(out_path))
    assert code == 0 and "wrote 300 conversations" in out
    texts = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    expected = [concat_fields(json.loads(line)) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 300 and texts == expected


def test_convert_chain_openai_then_moss_is_lossless(capsys, tmp_path):
    files = sample_files()
    openai = tmp_path / "openai.jsonl"
    back = tmp_path / "moss.jsonl"
    assert run(capsys, "data", "convert", *map(str, files), "--to", "openai", "--out", str(openai))[0] == 0
    assert run(capsys, "data", "convert", str(openai), "--to", "moss", "--out", str(back))[0] == 0
    original = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert [json.loads(line) for line in back.read_text(encoding="utf-8").splitlines()] == original


def test_convert_writes_nothing_when_input_is_bad(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{broken\n', encoding="utf-8")
    out_path = tmp_path / "out.jsonl"
    out_path.write_text("previous content\n")
    code, _, err = run(capsys, "data", "convert", str(bad), "--to", "moss", "--out", str(out_path))
    assert code == 1 and f"{bad}:2: invalid JSON" in err and "nothing written" in err
    assert out_path.read_text() == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]
