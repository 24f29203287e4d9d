"""The data flywheel end to end: chats and ratings over HTTP -> `moss data export` -> `moss data check`
-> `moss train sft` on what was exported."""

import json
import subprocess
import sys

from test_webchat_api import done, events, login
from webchat_fixtures import CALC_Q, CALC_REPLY, CODE_Q, start_webchat

from mosslm.agent import ModelGenerator
from mosslm.model import load


def moss(*args):
    return subprocess.run([sys.executable, "-m", "mosslm", *args], capture_output=True, text=True, timeout=600)


def test_rated_conversations_become_checked_dpo_pairs_and_sft_data_that_trains(webchat_model, tmp_path):
    generator = ModelGenerator(load(webchat_model))
    data_dir = tmp_path / "serve"
    try:
        with start_webchat(data_dir, generator=generator) as chat:
            client = login(chat.url, chat.invite)
            liked = done(events(client, {"content": CALC_Q}))
            client.put(f"/api/messages/{liked['id']}/feedback", json={"rating": "up"})
            first = events(client, {"content": CODE_Q})
            code_reply, code_user = done(first), first[0]["user_message"]["id"]
            client.put(f"/api/messages/{code_reply['id']}/feedback",
                       json={"rating": "down", "better_answer": "```python\nprint('hello world')\n```"})
            # Two regenerations of one prompt rated differently (the second cut short: they differ).
            short = done(events(client, {"conversation_id": first[0]["conversation"]["id"], "regenerate": code_user,
                                         "settings": {"max_tokens": 4}}))
            client.put(f"/api/messages/{short['id']}/feedback", json={"rating": "up"})
            # A follow-up in the liked conversation, with a contact address to be masked.
            follow = done(events(client, {"conversation_id": liked["conversation_id"], "parent_id": liked["id"],
                                          "content": "请把结果发到 wang.lei@example.com"}))
            assert follow["status"] == "complete"
    finally:
        generator.engine.shutdown()

    dpo = tmp_path / "pairs.jsonl"
    r = moss("data", "export", "--data-dir", str(data_dir), "--format", "dpo", "--out", str(dpo))
    assert r.returncode == 0, r.stderr
    pairs = [json.loads(line) for line in dpo.read_text(encoding="utf-8").splitlines()]
    reasons = sorted(p["source"]["reason"] for p in pairs)
    assert reasons == ["better_answer", "rated_siblings"], reasons
    by = {p["source"]["reason"]: p for p in pairs}
    assert "print('hello world')" in by["better_answer"]["chosen"][0]["content"]
    assert by["better_answer"]["rejected"][0]["content"] == code_reply["content"]
    assert by["rated_siblings"]["chosen"][0]["content"] == short["content"]
    assert by["rated_siblings"]["prompt"][-1] == {"role": "user", "content": CODE_Q}
    check = moss("data", "check", str(dpo))
    assert check.returncode == 0 and "dpo" in check.stdout + check.stderr, check.stdout + check.stderr

    sft = tmp_path / "sft.jsonl"
    r = moss("data", "export", "--data-dir", str(data_dir), "--format", "moss", "--out", str(sft))
    assert r.returncode == 0, r.stderr
    text = sft.read_text(encoding="utf-8")
    assert CALC_REPLY in text and "print('hello world')" in text
    assert "wang.lei@example.com" not in text and "<EMAIL>" in text  # PII masked by default
    assert moss("data", "check", str(sft)).returncode == 0

    run = tmp_path / "run"
    r = moss("train", "sft", f"init={webchat_model}", f"tokenizer={webchat_model}", f"train={sft}", f"val={sft}",
             "seq_len=1024", "batch_size=2", "micro_batch_size=2", "max_steps=3", "save_every=3", "eval_every=3",
             "log_every=1", "dtype=fp32", "progress=false", "lr=0.0005", "warmup_steps=1", f"out={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len([x for x in rows if "loss" in x]) == 3 and all(x["loss"] == x["loss"] for x in rows if "loss" in x)
    assert load(run / "final").protocol == "mosslm"
