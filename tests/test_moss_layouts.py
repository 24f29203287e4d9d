"""The released MOSS SFT data layouts (docs/protocol.md, "The released data layouts").

One test (or a few) per rule, named after it. Every conversation here is
written for this project; none is copied from the released data.
"""

import json
import os
import re
import resource
import tracemalloc

import pytest

from mosslm import protocol
from mosslm.cli import main
from mosslm.data.conversations import MAX_STORED_PROBLEMS, check_files
from mosslm.protocol import ProtocolError
from test_protocol import concat_fields

T2I_META = protocol.meta_instruction("moss", ["Text2Image"])
SEARCH_META = protocol.meta_instruction("moss", ["Search"])
PLAIN_META = protocol.meta_instruction("moss", inner_thoughts=False)

NONE_SCAFFOLD = {"Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n", "Commands": "<|Commands|>: None<eoc>\n",
                 "Tool Responses": "<|Results|>: None<eor>\n"}


def text2image_record():
    """A Text2Image conversation whose Results field is the inline one-line form."""
    return {
        "conversation_id": 7001,
        "meta_instruction": T2I_META,
        "num_turns": 2,
        "chat": {
            "turn_1": {
                "Human": "<|Human|>: 画一只睡在窗台上的灰猫，水彩风格<eoh>\n",
                "Inner Thoughts": "<|Inner Thoughts|>: 用户想要一幅水彩画，我应该调用文生图插件<eot>\n",
                "Commands": '<|Commands|>: Text2Image("a watercolor painting of a grey cat asleep on a '
                            'sunny windowsill")<eoc>\n',
                "Tool Responses": "<|Results|>: Image generated successfully.<eor>\n",
                "MOSS": "<|MOSS|>: 好的，这是一幅水彩风格的灰猫在窗台上睡觉的图片。<eom>\n",
            },
            "turn_2": {
                "Human": "<|Human|>: Thanks! What colour is the cat?<eoh>\n",
                **NONE_SCAFFOLD,
                "MOSS": "<|MOSS|>: The cat is grey, as you asked.<eom>\n",
            },
        },
        "category": "tool",
    }


def stray_terminator_record():
    """A Search conversation whose reply holds an `<eor>` before its `<eom>`, a released-data quirk."""
    return {
        "conversation_id": 7002,
        "meta_instruction": SEARCH_META,
        "num_turns": 1,
        "chat": {
            "turn_1": {
                "Human": "<|Human|>: 台湾最高的山是哪座？<eoh>\n",
                "Inner Thoughts": "<|Inner Thoughts|>: 这是一个地理事实问题，搜索一下更可靠<eot>\n",
                "Commands": '<|Commands|>: Search("台湾 最高峰")<eoc>\n',
                "Tool Responses": '<|Results|>:\nSearch("台湾 最高峰") =>\n<|1|>: "玉山主峰海拔3952米，是台湾最高峰。"\n<eor>\n',
                "MOSS": "<|MOSS|>: 台湾最高的山是玉山，主峰海拔3952米<sup><|1|></sup><eor><eom>\n",
            },
        },
        "category": "tool",
    }


def plain_record(i, **keys):
    record = {"meta_instruction": PLAIN_META,
              "chat": {"turn_1": {"Human": f"<|Human|>: Question number {i}?<eoh>\n",
                                  "MOSS": f"<|MOSS|>: Answer number {i}.<eom>\n"}}}
    record.update(keys)
    return record


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def converted(capsys, tmp_path, to, *inputs, extra=()):
    out = tmp_path / f"out.{to}.jsonl"
    code, stdout, stderr = run(capsys, "data", "convert", *inputs, "--to", to, "--out", out, *extra)
    assert code == 0, stderr
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()], stdout, stderr


def lossless_through_openai_and_sharegpt(record):
    conv = protocol.from_moss_json(record)
    via_openai = json.loads(json.dumps(protocol.to_openai(conv), ensure_ascii=False))
    assert protocol.to_moss_json(protocol.from_openai(via_openai)) == record
    via_sharegpt = json.loads(json.dumps(protocol.to_sharegpt(conv), ensure_ascii=False))
    assert protocol.to_moss_json(protocol.from_sharegpt(via_sharegpt)) == record


# ---------------------------------------------------------------- rule 1: inline Results

def test_rule_inline_results_field_round_trips_byte_exact():
    record = text2image_record()
    conv = protocol.from_moss_json(record)
    turn = conv.turns[0]
    assert turn.results == "Image generated successfully." and turn.results_inline
    assert conv.turns[1].results is None and not conv.turns[1].results_inline
    assert conv.render() == concat_fields(record)
    assert "".join(text for text, _ in conv.segments()) == conv.render()
    assert dict(conv.segments()[1:])["<|Results|>: Image generated successfully.<eor>\n"] == "results"
    assert protocol.to_moss_json(conv) == record
    lossless_through_openai_and_sharegpt(record)


def test_rule_inline_results_flag_is_in_the_moss_extension_only_when_set():
    conv = protocol.from_moss_json(text2image_record())
    assistants = [m for m in protocol.to_openai(conv)["messages"] if m.get("moss")]
    assert assistants[0]["moss"]["results_inline"] is True
    assert "results_inline" not in assistants[1]["moss"]
    # The three Results forms, each from its own field string.
    for field, results, inline in [("<|Results|>: None<eor>\n", None, False),
                                   ("<|Results|>:\nNone\n<eor>\n", "None\n", False),
                                   ("<|Results|>: Image generated successfully.<eor>\n",
                                    "Image generated successfully.", True)]:
        record = text2image_record()
        record["chat"]["turn_1"]["Tool Responses"] = field
        turn = protocol.from_moss_json(record).turns[0]
        assert (turn.results, turn.results_inline) == (results, inline)
        assert protocol.render_results_field(turn.results, turn.results_inline) == field


def test_rule_inline_results_renders_the_same_through_the_chat_template(tiny_tokenizer):
    conv = protocol.from_moss_json(text2image_record())
    messages = protocol.to_openai(conv)["messages"]
    tiny_tokenizer.chat_template = protocol.chat_template("moss")
    assert tiny_tokenizer.apply_chat_template(messages, tokenize=False) == conv.render()


def test_rule_inline_results_are_compressed_like_any_other():
    record = text2image_record()
    record["chat"]["turn_2"]["Tool Responses"] = "<|Results|>: Image generated successfully.<eor>\n"
    conv = protocol.from_moss_json(record)
    compressed = protocol.compress_history(conv)
    assert compressed.turns[0].results is None and not compressed.turns[0].results_inline
    assert compressed.turns[0].fields()["Tool Responses"] == "<|Results|>: None<eor>\n"
    assert compressed.turns[1].results_inline  # the last turn keeps its results
    assert conv.turns[0].results_inline  # the original is not changed


def test_rule_inline_results_check_and_convert_to_text(capsys, tmp_path):
    path = write_jsonl(tmp_path / "t2i.jsonl", [text2image_record()])
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 0 and "0 errors, 0 warnings" in out
    texts, _, _ = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(text2image_record())]


# ---------------------------------------------------------------- rule 2: stray foreign terminators

def test_rule_stray_foreign_terminator_is_kept_verbatim_and_warned():
    record = stray_terminator_record()
    warnings = []
    conv = protocol.from_moss_json(record, warnings)
    assert conv.turns[0].reply.endswith("<sup><|1|></sup><eor>")
    assert warnings == ["turn_1.MOSS holds a stray <eor> before its <eom> (kept verbatim)"]
    assert conv.render() == concat_fields(record)
    assert protocol.to_moss_json(conv) == record
    lossless_through_openai_and_sharegpt(record)
    protocol.from_moss_json(record)  # without a list the quirk is accepted silently


def test_rule_stray_foreign_terminator_passes_check_with_a_file_line_warning(capsys, tmp_path):
    path = write_jsonl(tmp_path / "search.jsonl", [plain_record(1), stray_terminator_record()])
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 0
    assert f"{path}:2: warning: turn_1.MOSS holds a stray <eor> before its <eom> (kept verbatim)" in out.splitlines()
    assert f"{path}: 2 conversations (moss), 2 turns, 0 errors, 1 warnings" in out
    assert out.splitlines()[-1].startswith("checked 2 conversations in 1 file: 0 errors, 1 warnings; ")


def test_rule_stray_foreign_terminator_never_blocks_convert(capsys, tmp_path):
    path = write_jsonl(tmp_path / "search.jsonl", [stray_terminator_record(), plain_record(2)])
    texts, out, err = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(stray_terminator_record()), concat_fields(plain_record(2))]
    assert f"{path}:1: warning: turn_1.MOSS holds a stray <eor>" in err
    assert "wrote 2 conversations" in out and "1 warnings" in out
    for fmt in ("openai", "sharegpt"):
        via, _, _ = converted(capsys, tmp_path, fmt, path)
        write_jsonl(tmp_path / f"via.{fmt}.jsonl", via)
        back, _, _ = converted(capsys, tmp_path, "moss", tmp_path / f"via.{fmt}.jsonl")
        assert back == [stray_terminator_record(), dict(plain_record(2), num_turns=1)]


def test_rule_stray_foreign_terminator_in_human_is_warned():
    record = plain_record(3)
    record["chat"]["turn_1"]["Human"] = "<|Human|>: what does <eom> mean?<eoh>\n"
    warnings = []
    assert protocol.from_moss_json(record, warnings).turns[0].human == "what does <eom> mean?"
    assert warnings == ["turn_1.Human holds a stray <eom> before its <eoh> (kept verbatim)"]


# ---------------------------------------------------------------- rule 3: own terminator inside

@pytest.mark.parametrize("field, value", [
    ("MOSS", "<|MOSS|>: first<eom>second<eom>\n"),
    ("Human", "<|Human|>: one<eoh>two<eoh>\n"),
    ("Tool Responses", "<|Results|>: done<eor>again<eor>\n"),
])
def test_rule_own_terminator_inside_a_field_is_an_error(field, value):
    record = text2image_record()
    record["chat"]["turn_1"][field] = value
    with pytest.raises(ProtocolError, match=rf"turn_1\.{field} holds its own terminator"):
        protocol.from_moss_json(record, [])


def test_rule_own_terminator_inside_a_field_is_an_error_in_every_format(capsys, tmp_path):
    path = write_jsonl(tmp_path / "openai.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a<eom>b"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a<eor>b"}]}])
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 1
    assert f"{path}:1: turn_1.MOSS holds its own terminator <eom> before its end" in out
    assert f"{path}:2: warning: turn_1.MOSS holds a stray <eor> before its <eom> (kept verbatim)" in out


def test_existing_errors_stay_errors():
    record = text2image_record()
    for change, needle in [
            (lambda r: r["chat"]["turn_1"].update(MOSS="<|MOSS|>: no end\n"), "is not of the form"),
            (lambda r: r["chat"]["turn_1"].update(MOSS="<|MOSS|>: no newline<eom>"), "is not of the form"),
            (lambda r: r["chat"]["turn_1"].pop("Commands"), "plugin turn needs all"),
            (lambda r: r["chat"]["turn_1"].update(Assistant="x"), "unknown field"),
            (lambda r: r["chat"].update(turn_5=r["chat"].pop("turn_2")), "turn keys"),
            (lambda r: r["chat"]["turn_1"].update({"Tool Responses": "<|Results|>:None<eor>\n"}), "not of the form")]:
        bad = json.loads(json.dumps(record))
        change(bad)
        with pytest.raises(ProtocolError, match=needle):
            protocol.from_moss_json(bad, [])


# ---------------------------------------------------------------- rules 4-5: layouts and folders

def test_rule_one_conversation_per_line_jsonl(capsys, tmp_path):
    records = [plain_record(i, conversation_id=i, num_turns=1) for i in range(5)]
    path = write_jsonl(tmp_path / "no-tools.jsonl", records)
    texts, out, _ = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(r) for r in records]
    assert "wrote 5 conversations" in out


def test_rule_one_conversation_per_json_file_in_a_folder_walked_recursively_in_order(capsys, tmp_path):
    folder = tmp_path / "plugin-data"
    (folder / "b").mkdir(parents=True)
    (folder / "docs").mkdir()
    layout = {"a.json": text2image_record(), "b/10.json": plain_record(10), "b/2.json": stray_terminator_record()}
    for name, record in layout.items():
        (folder / name).write_text(json.dumps(record, ensure_ascii=False, indent=2), encoding="utf-8")
    write_jsonl(folder / "c.jsonl", [plain_record(20), plain_record(21)])
    (folder / "notes.txt").write_text("not data")
    (folder / "docs" / "README.md").write_text("# not data")
    texts, _, err = converted(capsys, tmp_path, "text", folder)
    expected = [text2image_record(), plain_record(10), stray_terminator_record(), plain_record(20), plain_record(21)]
    assert texts == [concat_fields(r) for r in expected]
    assert f"{folder / 'b' / '2.json'}:1: warning: turn_1.MOSS holds a stray <eor>" in err
    code, out, _ = run(capsys, "data", "check", folder)
    assert code == 0
    assert f"{folder}: 4 files, 5 conversations (moss), 6 turns, 0 errors, 1 warnings" in out
    assert out.splitlines()[-1].startswith("checked 5 conversations in 4 files: 0 errors, 1 warnings; ")


def test_rule_json_list_still_works(capsys, tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([plain_record(1), text2image_record()], indent=1), encoding="utf-8")
    texts, _, _ = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(plain_record(1)), concat_fields(text2image_record())]


def test_rule_folder_without_data_files_is_an_error(capsys, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    code, out, _ = run(capsys, "data", "check", empty)
    assert code == 1 and f"{empty}:0: no .json or .jsonl files in this folder" in out
    code, _, err = run(capsys, "data", "convert", empty, "--to", "text", "--out", tmp_path / "o.jsonl",
                       "--skip-invalid")
    assert code == 1 and "nothing written" in err and not (tmp_path / "o.jsonl").exists()


def test_rule_folder_output_is_not_read_back_as_input(capsys, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "in.jsonl", [plain_record(1)])
    for _ in range(2):
        code, out, _ = run(capsys, "data", "convert", folder, "--to", "moss", "--out", folder / "out.jsonl")
        assert code == 0 and "wrote 1 conversations" in out


# ---------------------------------------------------------------- rules 6-7: optional keys, num_turns

def test_rule_optional_top_level_keys_may_be_missing(capsys, tmp_path):
    full = plain_record(1, conversation_id="moss_1", num_turns=1, category="harmless_en")
    bare = plain_record(2)
    path = write_jsonl(tmp_path / "mixed.jsonl", [full, bare])
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 0 and "2 conversations (moss)" in out
    back, _, _ = converted(capsys, tmp_path, "moss", path)
    assert back[0] == full and list(back[0]) == ["conversation_id", "meta_instruction", "num_turns", "chat",
                                                 "category"]
    assert back[1] == dict(bare, num_turns=1)  # num_turns is always written; the rest stays absent
    texts, _, _ = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(full), concat_fields(bare)]


def test_rule_num_turns_must_match_when_present():
    protocol.from_moss_json(text2image_record())
    with pytest.raises(ProtocolError, match="num_turns is 3 but chat has 2 turns"):
        protocol.from_moss_json(dict(text2image_record(), num_turns=3))


# ---------------------------------------------------------------- rule 8: None scaffold

def test_rule_none_scaffold_renders_as_read():
    with_scaffold = plain_record(1, num_turns=1)
    with_scaffold["chat"]["turn_1"] = {"Human": "<|Human|>: 你好<eoh>\n", **NONE_SCAFFOLD,
                                       "MOSS": "<|MOSS|>: 你好！有什么可以帮你？<eom>\n"}
    conv = protocol.from_moss_json(with_scaffold)
    assert conv.turns[0].plugin and conv.turns[0].commands is None
    assert conv.render() == concat_fields(with_scaffold)
    assert "<|Inner Thoughts|>: None<eot>\n<|Commands|>: None<eoc>\n<|Results|>: None<eor>\n" in conv.render()
    lossless_through_openai_and_sharegpt(with_scaffold)
    without = protocol.from_moss_json(plain_record(2))
    assert not without.turns[0].plugin and "<|Inner Thoughts|>" not in without.render()


# ---------------------------------------------------------------- rule 9: BOM, CRLF, blank lines

def test_rule_bom_crlf_and_blank_lines_are_accepted(capsys, tmp_path):
    records = [text2image_record(), plain_record(5)]
    body = "\r\n\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n\r\n"
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    texts, _, _ = converted(capsys, tmp_path, "text", path)
    assert texts == [concat_fields(r) for r in records]
    single = tmp_path / "one.json"
    single.write_bytes(b"\xef\xbb\xbf" + json.dumps(records[0], indent=2).replace("\n", "\r\n").encode())
    texts, _, _ = converted(capsys, tmp_path, "text", single)
    assert texts == [concat_fields(records[0])]


def test_rule_non_utf8_line_is_an_error_at_its_line(capsys, tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(plain_record(1)).encode()
    path.write_bytes(good + b"\n" + json.dumps(plain_record(2)).encode().replace(b"Question", b"Qu\xe9stion")
                     + b"\n" + good + b"\n")
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 1
    assert f"{path}:2: not UTF-8 text: byte 0xe9" in out
    assert f"{path}: 3 conversations (moss), 2 turns, 1 errors, 0 warnings" in out


# ---------------------------------------------------------------- rule 10: streaming, capped problems

def _big_file(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            record = plain_record(i, conversation_id=i)
            record["chat"]["turn_1"]["MOSS"] = f"<|MOSS|>: {'varied text %d ' % (i * 7919 % 104729) * 8}<eom>\n"
            f.write(json.dumps(record) + "\n")
    return path


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rule_streaming_jsonl_memory_does_not_grow_with_the_file(tmp_path):
    small, big = _big_file(tmp_path / "small.jsonl", 500), _big_file(tmp_path / "big.jsonl", 5000)
    check_files([str(small)])  # warm imports and caches before measuring
    peak_small = _traced_peak(lambda: check_files([str(small)]))
    peak_big = _traced_peak(lambda: check_files([str(big)]))
    assert big.stat().st_size > 10 * 1e5  # a whole-file read would need this much at least
    assert peak_big < 2 * peak_small + 200_000, (peak_small, peak_big)
    assert peak_big < big.stat().st_size / 5


def test_rule_problems_are_capped_per_input(capsys, tmp_path):
    extra = 25
    path = tmp_path / "broken.jsonl"
    path.write_text("{broken\n" * (MAX_STORED_PROBLEMS + extra), encoding="utf-8")
    [report] = check_files([str(path)])
    assert report.errors == MAX_STORED_PROBLEMS + extra and len(report.problems) == MAX_STORED_PROBLEMS
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 1
    assert out.count("invalid JSON") == MAX_STORED_PROBLEMS
    assert f"{path}: {extra} more not shown (at most {MAX_STORED_PROBLEMS} are kept per input)" in out


# ---------------------------------------------------------------- rule 11: convert --skip-invalid

def test_rule_skip_invalid_writes_the_good_records_and_names_the_bad(capsys, tmp_path):
    bad_reply = plain_record(3)
    bad_reply["chat"]["turn_1"]["MOSS"] = "<|MOSS|>: missing its end\n"
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(plain_record(1)), "{not json", json.dumps(bad_reply),
                               json.dumps(stray_terminator_record(), ensure_ascii=False)]) + "\n", encoding="utf-8")
    out_path = tmp_path / "out.jsonl"
    out_path.write_text("previous\n")
    code, _, err = run(capsys, "data", "convert", path, "--to", "text", "--out", out_path)
    assert code == 1 and "2 bad records; nothing written" in err and out_path.read_text() == "previous\n"
    code, out, err = run(capsys, "data", "convert", path, "--to", "text", "--out", out_path, "--skip-invalid")
    assert code == 0
    texts = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert texts == [concat_fields(plain_record(1)), concat_fields(stray_terminator_record())]
    lines = err.splitlines()
    listing = lines[lines.index("skipped 2 invalid records:") + 1:]
    assert listing[0].startswith(f"  {path}:2: invalid JSON")
    assert listing[1].startswith(f"  {path}:3: turn_1.MOSS is not of the form")
    assert f"{path}:4: warning: turn_1.MOSS holds a stray <eor>" in err
    assert out.strip() == f"wrote 2 conversations to {out_path} (text); skipped 2 invalid records, 1 warnings"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl", "out.jsonl"]  # no temp file left


# ---------------------------------------------------------------- the CLI's closing line

def test_check_prints_rate_and_peak_rss(capsys, tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", [text2image_record(), stray_terminator_record()])
    code, out, _ = run(capsys, "data", "check", path)
    assert code == 0
    last = out.splitlines()[-1]
    m = re.fullmatch(r"checked 2 conversations in 1 file: 0 errors, 1 warnings; (\d+\.\d) MB in (\d+\.\d\d) s "
                     r"\(([\d,]+) conversations/s, (\d+\.\d) MB/s\), peak RSS (\d+) MB", last)
    assert m, last
    assert float(m[1]) == round(path.stat().st_size / 1e6, 1)
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    assert 0 < int(m[5]) <= peak_now + 1


def test_converted_files_get_the_usual_permissions_not_a_temp_files(tmp_path):
    import stat

    src = tmp_path / "in.jsonl"
    record = {"meta_instruction": "m\n", "chat": {"turn_1": {"Human": "<|Human|>: hi<eoh>\n",
                                                            "MOSS": "<|MOSS|>: hello<eom>\n"}}}
    src.write_text(json.dumps(record) + "\n")
    old = os.umask(0o022)
    try:
        from mosslm.data.conversations import convert_files

        convert_files([str(src)], "text", tmp_path / "out.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o644
