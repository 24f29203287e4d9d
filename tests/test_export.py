"""The data flywheel export (`moss data export`, mosslm.serve.export) and dpo checking.

The database is filled with plain SQL that follows the schema (MIGRATIONS[2]),
through a small local helper, not the store's own API.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mosslm.cli import main
from mosslm.serve import export as export_mod
from mosslm.serve.export import ExportError, export
from mosslm.serve.store import open_db

RESULTS = "Calculate(\"37*91\") => '3367'\n"


class Chat:
    """Inserts web chat rows: conversations, messages, feedback, moderation events."""

    def __init__(self, data_dir: Path):
        self.store = open_db(data_dir)
        self.n = 0

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n:024x}"

    def conversation(self, created: str) -> str:
        cid = self._id("c")
        self.store.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
                           "VALUES (?, 0, 'title', ?, ?)", (cid, created, created))
        return cid

    def message(self, cid: str, parent: str | None, role: str, content: str, created: str, status: str = "complete",
                model: str = "tiny", plugin: tuple | None = None, params: dict | None = None) -> str:
        mid = self._id("m")
        thoughts, commands, results = plugin or (None, None, None)
        self.store.execute(
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, plugin, thoughts, commands, "
            "results, model, params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, cid, parent, role, content, status, int(plugin is not None), thoughts, commands, results,
             model if role == "assistant" else None, json.dumps(params or {"plugins": ["Calculate"]}), created))
        return mid

    def feedback(self, mid: str, rating: str | None, better: str | None = None) -> None:
        self.store.execute("INSERT INTO feedback (message_id, user_id, rating, better_answer, created_at, updated_at) "
                           "VALUES (?, 0, ?, ?, '2026-11-20T00:00:00Z', '2026-11-20T00:00:00Z')", (mid, rating, better))

    def flag(self, cid: str, mid: str) -> None:
        self.store.execute("INSERT INTO moderation_events (user_id, conversation_id, message_id, stage, rule, text, "
                           "created_at) VALUES (0, ?, ?, 'output', 'words:test', NULL, '2026-11-20T00:00:00Z')",
                           (cid, mid))


@pytest.fixture
def chat(tmp_path):
    """A small web chat history; each reply's content names what should happen to it."""
    c = Chat(tmp_path / "serve")
    ids = {}
    old = c.conversation("2026-10-01T09:00:00Z")
    u = c.message(old, None, "user", "old question <eoh> typed by a user", "2026-10-01T09:00:00Z")
    ids["old"] = c.message(old, u, "assistant", "old reply", "2026-10-01T09:00:05Z")
    c.feedback(ids["old"], "up")
    u = c.message(old, ids["old"], "user", "go on", "2026-10-01T09:01:00Z")
    ids["stopped_fixed"] = c.message(old, u, "assistant", "half an ans", "2026-10-01T09:01:05Z", status="stopped")
    c.feedback(ids["stopped_fixed"], "down", "the whole answer")
    ids["error"] = c.message(old, u, "assistant", "", "2026-10-01T09:01:09Z", status="error")

    new = c.conversation("2026-11-10T08:00:00Z")
    u1 = c.message(new, None, "user", "你好，我的邮箱是 zhang.san@example.com", "2026-11-10T08:00:00Z")
    ids["liked"] = c.message(new, u1, "assistant", "你好！有什么可以帮你？", "2026-11-10T08:00:02Z")
    ids["disliked"] = c.message(new, u1, "assistant", "走开。", "2026-11-10T08:00:09Z")
    c.feedback(ids["liked"], "up")
    c.feedback(ids["disliked"], "down")
    u2 = c.message(new, ids["liked"], "user", "计算 37*91", "2026-11-10T08:01:00Z")
    ids["plugin"] = c.message(new, u2, "assistant", "37*91 等于 3366。", "2026-11-10T08:01:03Z",
                              plugin=("用户要计算，我应调用计算器", 'Calculate("37*91")', RESULTS))
    c.feedback(ids["plugin"], "down", "37*91 等于 3367。")
    u3 = c.message(new, ids["plugin"], "user", "谢谢", "2026-11-10T08:02:00Z")
    ids["plain"] = c.message(new, u3, "assistant", "不客气，有事打13812345678", "2026-11-10T08:02:02Z")
    ids["liked_fixed"] = c.message(new, u3, "assistant", "不用谢", "2026-11-10T08:02:30Z", model="other")
    c.feedback(ids["liked_fixed"], "up", "不客气！")
    ids["stopped"] = c.message(new, u3, "assistant", "不", "2026-11-10T08:02:40Z", status="stopped")
    ids["flagged"] = c.message(new, u3, "assistant", "flagged reply", "2026-11-10T08:02:50Z")
    c.flag(new, ids["flagged"])
    c.ids, c.data_dir = ids, tmp_path / "serve"
    yield c
    c.store.close()


def records(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def check(path):
    return subprocess.run([sys.executable, "-m", "mosslm", "data", "check", str(path)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])


def exported(chat, tmp_path, fmt, **kw):
    out = tmp_path / f"out-{fmt}.jsonl"
    stats = export(chat.data_dir, fmt, out, **kw)
    return stats, records(out), out


def reply_ids(recs):
    return [r["source"]["message_id"] for r in recs]


@pytest.mark.parametrize("fmt", ["moss", "sharegpt", "openai", "dpo"])
def test_every_format_passes_data_check(chat, tmp_path, fmt):
    stats, recs, out = exported(chat, tmp_path, fmt)
    assert stats.records == len(recs) > 0 and stats.conversations == 2
    result = check(out)
    assert result.returncode == 0, result.stdout
    assert f"{len(recs)} conversations ({fmt}), " in result.stdout and " 0 errors, 0 warnings" in result.stdout


def test_rating_selects_replies(chat, tmp_path):
    ids = chat.ids
    _, recs, _ = exported(chat, tmp_path, "moss")
    assert reply_ids(recs) == [ids[k] for k in ("old", "stopped_fixed", "liked", "plugin", "plain", "liked_fixed")]
    by_id = {r["source"]["message_id"]: r for r in recs}
    assert by_id[ids["stopped_fixed"]]["chat"]["turn_2"]["MOSS"] == "<|MOSS|>: the whole answer<eom>\n"
    assert by_id[ids["liked_fixed"]]["chat"]["turn_3"]["MOSS"] == "<|MOSS|>: 不客气！<eom>\n"
    # an earlier corrected turn on the path carries its better answer
    assert by_id[ids["plain"]]["chat"]["turn_2"]["MOSS"] == "<|MOSS|>: 37*91 等于 3367。<eom>\n"
    # user text is escaped as the chat escapes it
    assert by_id[ids["old"]]["chat"]["turn_1"]["Human"] == "<|Human|>: old question < eoh> typed by a user<eoh>\n"
    _, up, _ = exported(chat, tmp_path, "moss", rating="up")
    assert reply_ids(up) == [ids[k] for k in ("old", "stopped_fixed", "liked", "plugin", "liked_fixed")]
    _, down, _ = exported(chat, tmp_path, "moss", rating="down")
    assert reply_ids(down) == [ids["stopped_fixed"], ids["plugin"]]


def test_since_and_model_filter(chat, tmp_path):
    ids = chat.ids
    _, recs, _ = exported(chat, tmp_path, "openai", since="2026-11-01")
    assert reply_ids(recs) == [ids[k] for k in ("liked", "plugin", "plain", "liked_fixed")]
    _, recs, _ = exported(chat, tmp_path, "openai", since="2026-11-10T08:01:30Z")
    assert reply_ids(recs) == [ids["plain"], ids["liked_fixed"]]
    _, recs, _ = exported(chat, tmp_path, "sharegpt", model="other")
    assert reply_ids(recs) == [ids["liked_fixed"]]
    stats = export(chat.store, "sharegpt", tmp_path / "from-store.jsonl", model="other")  # a Store works too
    assert stats.records == 1
    with pytest.raises(ExportError, match="not a date"):
        export(chat.data_dir, "moss", tmp_path / "x.jsonl", since="last tuesday")


def test_plugin_turn_survives_in_moss(chat, tmp_path):
    _, recs, _ = exported(chat, tmp_path, "moss")
    rec = next(r for r in recs if r["source"]["message_id"] == chat.ids["plugin"])
    turn = rec["chat"]["turn_2"]
    assert turn == {"Human": "<|Human|>: 计算 37*91<eoh>\n",
                    "Inner Thoughts": "<|Inner Thoughts|>: 用户要计算，我应调用计算器<eot>\n",
                    "Commands": '<|Commands|>: Calculate("37*91")<eoc>\n',
                    "Tool Responses": f"<|Results|>:\n{RESULTS}<eor>\n",
                    "MOSS": "<|MOSS|>: 37*91 等于 3367。<eom>\n"}
    assert "- Calculator: enabled. API: Calculate(expression)" in rec["meta_instruction"]


def test_meta_instruction_recorded_in_params_is_used(tmp_path):
    c = Chat(tmp_path / "serve")
    cid = c.conversation("2026-11-01T00:00:00Z")
    u = c.message(cid, None, "user", "hi", "2026-11-01T00:00:00Z")
    c.message(cid, u, "assistant", "hello", "2026-11-01T00:00:01Z", params={"meta": "You are MOSS.\n"})
    c.store.close()
    stats = export(tmp_path / "serve", "moss", tmp_path / "o.jsonl")
    assert stats.records == 1 and records(tmp_path / "o.jsonl")[0]["meta_instruction"] == "You are MOSS.\n"


def test_dpo_pairs_follow_rules_a_and_b_only(chat, tmp_path):
    ids = chat.ids
    stats, pairs, _ = exported(chat, tmp_path, "dpo")
    got = [(p["source"]["reason"], p["source"]["chosen_message_id"], p["source"]["rejected_message_id"])
           for p in pairs]
    assert got == [("better_answer", ids["stopped_fixed"], ids["stopped_fixed"]),
                   ("rated_siblings", ids["liked"], ids["disliked"]),
                   ("better_answer", ids["plugin"], ids["plugin"])]
    assert stats.pairs == {"better_answer": 2, "rated_siblings": 1}
    sib = pairs[1]
    assert [m["role"] for m in sib["prompt"]] == ["system", "user"]
    assert sib["chosen"] == [{"role": "assistant", "content": "你好！有什么可以帮你？"}]
    assert sib["rejected"] == [{"role": "assistant", "content": "走开。"}]
    # the plugin turn: chosen and rejected keep the scaffold, only the reply differs
    fix = pairs[2]
    moss = {"thoughts": "用户要计算，我应调用计算器", "commands": 'Calculate("37*91")', "results": RESULTS}
    assert fix["chosen"] == [{"role": "assistant", "content": "37*91 等于 3367。", "moss": moss}]
    assert fix["rejected"] == [{"role": "assistant", "content": "37*91 等于 3366。", "moss": moss}]
    assert [m["role"] for m in fix["prompt"]] == ["system", "user", "assistant", "user"]
    assert fix["prompt"][-1] == {"role": "user", "content": "计算 37*91"}
    stats, pairs, _ = exported(chat, tmp_path, "dpo", since="2026-11-01")
    assert stats.pairs == {"better_answer": 1, "rated_siblings": 1}
    with pytest.raises(ExportError, match="does not apply to dpo"):
        export(chat.data_dir, "dpo", tmp_path / "x.jsonl", rating="up")


def test_pii_masked_by_default_and_kept_with_no_mask(chat, tmp_path):
    stats, recs, out = exported(chat, tmp_path, "openai")
    text = out.read_text(encoding="utf-8")
    assert "zhang.san@example.com" not in text and "13812345678" not in text
    assert "你好，我的邮箱是 <EMAIL>" in text and "不客气，有事打<PHONE>" in text
    assert stats.masked == {"EMAIL": 4, "PHONE": 1}  # the first message is on four exported paths
    stats, _, out = exported(chat, tmp_path, "dpo")
    assert stats.masked == {"EMAIL": 2} and "zhang.san@example.com" not in out.read_text(encoding="utf-8")
    stats, _, out = exported(chat, tmp_path, "openai", mask=False)
    text = out.read_text(encoding="utf-8")
    assert "zhang.san@example.com" in text and "13812345678" in text and not stats.masked


def test_cli_export_and_no_mask_flag(chat, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    base = ["data", "export", "--data-dir", str(chat.data_dir), "--out", str(out)]
    assert main(base + ["--format", "moss"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("wrote 6 records from 2 conversations") and "PII masked: EMAIL 4, PHONE 1" in err
    assert "13812345678" not in out.read_text(encoding="utf-8")
    assert main(base + ["--format", "moss", "--no-mask-pii", "--rating", "down"]) == 0
    assert len(records(out)) == 2
    assert main(base + ["--format", "dpo", "--since", "yesterday"]) == 2
    assert "not a date" in capsys.readouterr().err


def test_cli_missing_database_errors_cleanly(tmp_path, capsys):
    data_dir, out = tmp_path / "nothing-here", tmp_path / "out.jsonl"
    assert main(["data", "export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no database" in err and "mosslm.db" in err
    assert not data_dir.exists() and not out.exists()


def test_output_not_left_half_written_on_error(chat, tmp_path, monkeypatch):
    out = tmp_path / "keep.jsonl"
    out.write_text("previous export\n", encoding="utf-8")
    calls = []

    def failing(record, fmt):
        calls.append(record)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(export_mod, "_validate", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export(chat.data_dir, "moss", out)
    assert out.read_text(encoding="utf-8") == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl", "serve"]


def test_broken_dpo_file_is_rejected_with_file_line_reasons(chat, tmp_path):
    _, pairs, _ = exported(chat, tmp_path, "dpo")
    good = pairs[2]
    same = dict(good, rejected=good["chosen"])
    no_prompt = {k: v for k, v in good.items() if k != "prompt"}
    ends_assistant = dict(good, prompt=good["prompt"] + [{"role": "assistant", "content": "hi"}])
    two = dict(good, chosen=good["chosen"] * 2)
    bad_turn = dict(good, chosen=[{"role": "assistant", "content": "a<eom>b"}])
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                            for r in (good, same, no_prompt, ends_assistant, two, bad_turn)), encoding="utf-8")
    result = check(path)
    assert result.returncode == 1
    out = result.stdout
    assert f"{path}:2: 'chosen' and 'rejected' are the same answer" in out
    assert f"{path}:3: a dpo record needs 'prompt', 'chosen' and 'rejected'; missing: prompt" in out
    assert f"{path}:4: 'prompt' must end with a user message, not 'assistant'" in out
    assert f"{path}:5: 'chosen' must be a list of exactly one assistant message" in out
    assert f"{path}:6: prompt + chosen: turn_2.MOSS holds its own terminator <eom>" in out
    assert f"{path}:1:" not in out
    assert "6 conversations (dpo), " in out and "5 errors" in out


def test_dpo_records_are_not_converted(chat, tmp_path, capsys):
    _, _, out = exported(chat, tmp_path, "dpo")
    assert main(["data", "convert", str(out), "--to", "moss", "--out", str(tmp_path / "sft.jsonl")]) == 1
    assert "cannot be converted" in capsys.readouterr().err
