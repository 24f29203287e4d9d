"""The web chat's REST API (docs/web-api.md) on a real server with a micro model trained here."""

import json
import sqlite3
import time

import httpx
import pytest
from webchat_fixtures import CALC_Q, CALC_REPLY, CODE_Q, STORY_Q, TOOL_XSS_Q, SlowGenerator, base_agent, start_webchat

from mosslm.agent import ModelGenerator
from mosslm.model import load
from mosslm.serve.app import Server, ServerConfig, create_app
from mosslm.serve.keys import create_key, revoke
from mosslm.serve.moderation import Moderator
from mosslm.serve.store import open_db


@pytest.fixture(scope="module")
def generator(webchat_model):
    gen = ModelGenerator(load(webchat_model))
    yield gen
    gen.engine.shutdown()


@pytest.fixture
def chat(generator, tmp_path):
    with start_webchat(tmp_path / "serve", generator=generator) as c:
        yield c


def browser(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60)


def login(url: str, code: str) -> httpx.Client:
    client = browser(url)
    r = client.post("/api/login", json={"code": code})
    assert r.status_code == 200, r.text
    return client


def events(client: httpx.Client, body: dict, until=None) -> list[dict]:
    """POST /api/chat and read its events (stop reading early when `until(event)` is true)."""
    out = []
    with client.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
                if until is not None and until(out[-1]):
                    break
    return out


def done(evs: list[dict]) -> dict:
    assert evs[-1]["type"] == "done", evs[-3:]
    return evs[-1]["message"]


def rows(store, sql: str, *args) -> list:
    return store.execute(sql, args).fetchall()


# ---------------------------------------------------------------- login and sessions

def test_login_trades_an_invitation_for_an_httponly_samesite_cookie(chat):
    client = browser(chat.url)
    assert client.get("/api/me").json()["error"]["code"] == "login_required"
    wrong = client.post("/api/login", json={"code": "moss-inv-not-a-real-code"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_code")
    r = client.post("/api/login", json={"code": chat.invite})
    cookie = r.headers["set-cookie"]
    assert "moss_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    me = client.get("/api/me").json()
    assert me["user"]["name"] == "tester" and me["plugins"] == ["Calculate", "Lookup"]
    token = client.cookies["moss_session"]
    assert token not in json.dumps([dict(r) for r in rows(chat.store, "SELECT * FROM sessions")])  # only its hash
    assert client.post("/api/logout", json={}).json() == {"ok": True}
    again = browser(chat.url)
    again.cookies.set("moss_session", token)
    assert again.get("/api/me").status_code == 401
    assert rows(chat.store, "SELECT COUNT(*) FROM sessions")[0][0] == 0


def test_revoked_and_expired_codes_say_which(chat):
    code, info = create_key(chat.store, invite=True)
    client = login(chat.url, code)
    revoke(chat.store, info.prefix)
    r = client.get("/api/me")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "code_revoked")
    r = browser(chat.url).post("/api/login", json={"code": code})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "code_revoked")
    late, info = create_key(chat.store, invite=True, expires="2099-01-01")
    chat.store.execute("UPDATE api_keys SET expires_at = '2020-01-01T00:00:00Z' WHERE id = ?", (info.id,))
    r = browser(chat.url).post("/api/login", json={"code": late})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "code_expired")


def test_sessions_survive_a_restart_and_expire(generator, tmp_path):
    with start_webchat(tmp_path, generator=generator) as first:
        client = login(first.url, first.invite)
        token = client.cookies["moss_session"]
    with start_webchat(tmp_path, generator=generator, config=ServerConfig(session_days=1 / 86400)) as second:
        again = browser(second.url)
        again.cookies.set("moss_session", token)
        assert again.get("/api/me").json()["user"]["name"] == "tester"  # the old session, after a restart
        short = login(second.url, first.invite).cookies["moss_session"]  # a session of one second
        time.sleep(1.2)
        late = browser(second.url)
        late.cookies.set("moss_session", short)  # sent anyway (a browser drops it itself at max-age)
        r = late.get("/api/me")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "session_expired")


def test_a_cookie_cannot_change_state_without_json(chat):
    client = login(chat.url, chat.invite)
    r = client.post("/api/conversations", content="title=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "json_required")
    assert client.post("/api/conversations", json={"title": "ok"}).status_code == 201


def test_an_api_key_works_as_a_bearer_token_for_scripts(chat):
    key, _ = create_key(chat.store, note="script")
    client = httpx.Client(base_url=chat.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert client.get("/api/me").json()["user"]["name"] == "script"
    assert client.post("/api/conversations", json={}).status_code == 201


# ---------------------------------------------------------------- chatting and the store

def test_a_streamed_plugin_reply_is_stored_with_its_protocol_text_and_calls(chat):
    client = login(chat.url, chat.invite)
    evs = events(client, {"content": CALC_Q})
    kinds = [e["type"] for e in evs]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("delta") >= 5
    assert [e["phase"] for e in evs if e["type"] == "step"][-2:] == ["commands", "results"]
    message = done(evs)
    assert message["status"] == "complete" and message["content"] == CALC_REPLY
    assert message["plugin"]["calls"][0]["command"] == 'Calculate("1234*5678")'
    assert "7006652" in message["plugin"]["calls"][0]["result"]
    row = rows(chat.store, "SELECT * FROM messages WHERE id = ?", message["id"])[0]
    assert row["protocol_text"].startswith(f"<|Human|>: {CALC_Q}<eoh>\n<|Inner Thoughts|>:")
    assert row["protocol_text"].endswith(f"<|MOSS|>: {CALC_REPLY}<eom>\n")
    params = json.loads(row["params"])
    assert params["plugins"] == ["Calculate", "Lookup"] and params["temperature"] == 0.0 and "Calculate" in params["meta"]
    assert row["model"] == "webchat-model"
    call = rows(chat.store, "SELECT * FROM plugin_calls WHERE message_id = ?", message["id"])[0]
    assert call["name"] == "Calculate" and call["duration_ms"] >= 0
    conv = client.get("/api/conversations").json()["data"][0]
    assert conv["title"] == CALC_Q and conv["id"] == evs[0]["conversation"]["id"]


def test_regenerate_edit_feedback_rename_and_delete(chat):
    client = login(chat.url, chat.invite)
    first = events(client, {"content": CODE_Q})
    cid, user_id, reply = first[0]["conversation"]["id"], first[0]["user_message"]["id"], done(first)
    assert "<pre><code" in reply["html"] and "<strong>python</strong>" in reply["html"]
    again = done(events(client, {"conversation_id": cid, "regenerate": user_id}))
    assert again["parent_id"] == user_id and again["id"] != reply["id"]
    edited = events(client, {"conversation_id": cid, "parent_id": None, "content": CALC_Q})
    assert edited[0]["user_message"]["parent_id"] is None  # a second root: the old branch stays
    messages = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant", "user", "assistant"]
    fb = client.put(f"/api/messages/{reply['id']}/feedback",
                    json={"rating": "down", "better_answer": "print('hi')", "comment": "too long"}).json()
    assert (fb["rating"], fb["better_answer"], fb["comment"]) == ("down", "print('hi')", "too long")
    fb = client.put(f"/api/messages/{reply['id']}/feedback", json={"rating": "up"}).json()
    assert fb["rating"] == "up" and fb["better_answer"] is None  # a changed rating replaces the old one
    assert client.patch(f"/api/conversations/{cid}", json={"title": "代码"}).json()["title"] == "代码"
    assert client.delete(f"/api/conversations/{cid}").json() == {"ok": True}
    assert client.get(f"/api/conversations/{cid}").status_code == 404
    assert rows(chat.store, "SELECT COUNT(*) FROM messages")[0][0] == 0
    assert rows(chat.store, "SELECT COUNT(*) FROM feedback")[0][0] == 0


def test_each_user_sees_only_their_own_conversations(chat):
    alice = login(chat.url, chat.invite)
    bob_code, _ = create_key(chat.store, note="bob", invite=True)
    bob = login(chat.url, bob_code)
    evs = events(alice, {"content": CALC_Q})
    cid, reply, user_id = evs[0]["conversation"]["id"], done(evs)["id"], evs[0]["user_message"]["id"]
    assert bob.get("/api/conversations").json() == {"data": []}
    for r in (bob.get(f"/api/conversations/{cid}"), bob.patch(f"/api/conversations/{cid}", json={"title": "x"}),
              bob.delete(f"/api/conversations/{cid}"), bob.put(f"/api/messages/{reply}/feedback", json={"rating": "up"}),
              bob.post(f"/api/messages/{reply}/stop", json={}),
              bob.post("/api/chat", json={"conversation_id": cid, "regenerate": user_id}),
              bob.post("/api/chat", json={"conversation_id": cid, "parent_id": reply, "content": "hi"})):
        assert r.status_code == 404, r.text
    assert len(alice.get(f"/api/conversations/{cid}").json()["messages"]) == 2


def test_settings_are_stored_per_user_and_checked(chat):
    client = login(chat.url, chat.invite)
    saved = client.put("/api/settings", json={"plugins": ["Calculate"], "temperature": 0.5, "max_tokens": 99}).json()
    assert (saved["plugins"], saved["temperature"], saved["max_tokens"]) == (["Calculate"], 0.5, 99)
    assert login(chat.url, chat.invite).get("/api/settings").json()["plugins"] == ["Calculate"]
    assert client.put("/api/settings", json={"plugins": ["Nope"]}).status_code == 400
    assert client.put("/api/settings", json={"temperature": 9}).status_code == 400


def test_stop_keeps_what_was_written_and_frees_the_engine(chat):
    client = login(chat.url, chat.invite)
    chat.generator.delay = 0.1
    got: list = []

    def stop_after_deltas(event):
        got.append(event)
        if sum(e["type"] == "delta" for e in got) == 3:
            client.post(f"/api/messages/{got[0]['message_id']}/stop", json={})
        return False

    message = done(events(client, {"content": CALC_Q}, until=stop_after_deltas))
    assert message["status"] == "stopped" and 3 <= len(message["content"]) < len(CALC_REPLY)
    assert CALC_REPLY.startswith(message["content"])
    deadline = time.time() + 5
    while chat.generator.engine.stats()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert chat.generator.engine.stats()["running"] == 0


def test_a_dropped_connection_leaves_the_reply_incomplete(chat):
    client = login(chat.url, chat.invite)
    chat.generator.delay = 0.1
    evs = events(client, {"content": CALC_Q}, until=lambda e: e["type"] == "delta")
    client.close()
    mid = evs[0]["message_id"]
    deadline = time.time() + 10
    while rows(chat.store, "SELECT status FROM messages WHERE id = ?", mid)[0][0] == "streaming" and time.time() < deadline:
        time.sleep(0.05)
    assert rows(chat.store, "SELECT status FROM messages WHERE id = ?", mid)[0][0] == "incomplete"


def test_bad_requests_get_clear_errors_never_500(chat):
    client = login(chat.url, chat.invite)
    cases = [({"content": ""}, 400), ({"content": "x", "conversation_id": "c-nope"}, 404),
             ({"content": "x", "parent_id": "m-nope"}, 404), ({"regenerate": "m-nope"}, 404),
             ({"content": "x", "bogus": 1}, 400), ({"content": "x" * 40_000}, 400),
             ({"content": "x", "settings": {"temperature": -1}}, 400)]
    for body, status in cases:
        r = client.post("/api/chat", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
    r = client.post("/api/chat", content=b"{broken", headers={"content-type": "application/json"})
    assert r.status_code == 400


# ---------------------------------------------------------------- consent

def test_a_key_with_logging_off_leaves_nothing_in_the_database(generator, tmp_path):
    with start_webchat(tmp_path, generator=generator, logging=False) as chat:
        client = login(chat.url, chat.invite)
        assert client.get("/api/me").json()["user"]["logging"] is False
        first = done(events(client, {"content": CALC_Q}))
        history = [{"user": CALC_Q, "assistant": {"content": first["content"], "plugin": first["plugin"]}}]
        second = done(events(client, {"content": "谢谢", "history": history}))
        assert second["status"] == "complete" and first["content"] == CALC_REPLY
        assert client.put(f"/api/messages/{first['id']}/feedback", json={"rating": "up"}).json()["stored"] is False
        assert client.get("/api/conversations").json() == {"data": []}
        for table in ("conversations", "messages", "plugin_calls", "feedback", "user_settings"):
            assert rows(chat.store, f"SELECT COUNT(*) FROM {table}")[0][0] == 0, table
        bad = client.post("/api/chat", json={"content": "x", "history": [{"user": "a", "assistant": {"content": "b<eom>"}}]})
        assert bad.status_code == 400


# ---------------------------------------------------------------- moderation

class RecordingGenerator(SlowGenerator):
    """The real generator, keeping every prompt it was given."""

    def __init__(self, inner):
        super().__init__(inner)
        self.prompts: list[str] = []

    def stream(self, prompt, params, result):
        self.prompts.append(prompt)
        yield from super().stream(prompt, params, result)


def test_a_blocked_input_never_reaches_the_model_and_is_stored(generator, tmp_path):
    recording = RecordingGenerator(generator)
    store = open_db(tmp_path)
    code, _ = create_key(store, invite=True)
    server = Server(base_agent(recording), "m", store=store, open_access=False, moderator=Moderator.from_config("input"))
    from conftest import serving

    with serving(create_app(server)) as url:
        client = login(url, code)
        evs = events(client, {"content": "请告诉我 违禁测试词 是什么"}, )
        assert [e["type"] for e in evs] == ["start", "blocked", "done"]
        assert evs[1]["stage"] == "input" and done(evs)["status"] == "blocked"
        assert recording.prompts == []
        event = rows(store, "SELECT * FROM moderation_events")[0]
        assert (event["stage"], event["rule"]) == ("input", "words:test") and "违禁测试词" in event["text"]
        assert done(events(client, {"content": CALC_Q}))["content"] == CALC_REPLY  # the rest passes
        assert len(recording.prompts) == 2  # both plugin passes
        zh = client.post("/api/chat", json={"content": "违禁测试词"}, headers={"accept-language": "zh-CN"})
        assert "抱歉" in [json.loads(x[6:]) for x in zh.text.splitlines() if x.startswith("data: ")][1]["message"]
    store.close()


def test_a_blocked_output_stops_at_the_sentence_that_tripped_it(generator, tmp_path):
    with start_webchat(tmp_path, generator=generator, moderation="both") as chat:
        client = login(chat.url, chat.invite)
        evs = events(client, {"content": STORY_Q})
        assert "blocked" in [e["type"] for e in evs]
        message = done(evs)
        assert message["status"] == "blocked" and message["content"] == "Once there was a small model."
        shown = "".join(e["text"] for e in evs if e["type"] == "delta")
        assert "MOSSLM-MODERATION-TEST" not in shown  # the listed phrase itself never went out
        event = rows(chat.store, "SELECT * FROM moderation_events")[0]
        assert event["stage"] == "output" and "MOSSLM-MODERATION-TEST" in event["text"]
        assert event["message_id"] == message["id"]


# ---------------------------------------------------------------- a killed server

def test_sigkill_mid_stream_loses_nothing_acknowledged(webchat_model, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def start():
        proc = subprocess.Popen([sys.executable, str(repo / "scripts" / "dev_webchat.py"), "--port", str(port), "--dir",
                                 str(tmp_path), "--model", str(webchat_model), "--delay", "0.1", "--moderation", "off"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = [proc.stdout.readline() for _ in range(2)]
        return proc, lines[1].split()[-1]

    proc, code = start()
    try:
        client = login(f"http://127.0.0.1:{port}", code)
        proc.stdout.close()
        client.cookies  # noqa: B018
        proc_delay_first = events(client, {"content": TOOL_XSS_Q}, until=lambda e: e["type"] == "done")
        liked = done(proc_delay_first)
        assert client.put(f"/api/messages/{liked['id']}/feedback", json={"rating": "up", "comment": "好"}).status_code == 200
        cid = proc_delay_first[0]["conversation"]["id"]
        cut = events(client, {"conversation_id": cid, "parent_id": liked["id"], "content": CALC_Q},
                     until=lambda e: e["type"] == "delta" and len(e["html"]) > 12)
        time.sleep(1.5)  # the reply is saved every second while it streams
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    db = tmp_path / "serve" / "mosslm.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    proc, code2 = start()  # a new invitation is made; the old session still works
    try:
        client2 = browser(f"http://127.0.0.1:{port}")
        client2.cookies.set("moss_session", client.cookies["moss_session"])
        messages = {m["id"]: m for m in client2.get(f"/api/conversations/{cid}").json()["messages"]}
        assert messages[liked["id"]]["feedback"]["rating"] == "up" and messages[liked["id"]]["status"] == "complete"
        assert messages[cut[0]["user_message"]["id"]]["content"] == CALC_Q
        partial = messages[cut[0]["message_id"]]
        seen = "".join(e["text"] for e in cut if e["type"] == "delta")
        assert partial["status"] == "incomplete" and partial["content"].startswith(seen) and seen
    finally:
        proc.kill()
        proc.wait(10)


def test_the_openai_api_is_moderated_too(generator, tmp_path):
    import openai

    with start_webchat(tmp_path, generator=generator, moderation="both", auth="none") as chat:
        api = openai.OpenAI(base_url=chat.url + "/v1", api_key="x", max_retries=0, timeout=60)
        blocked = api.chat.completions.create(model="webchat-model", messages=[{"role": "user", "content": "违禁测试词"}])
        assert blocked.choices[0].finish_reason == "content_filter" and blocked.usage.completion_tokens == 0
        story = api.chat.completions.create(model="webchat-model", messages=[{"role": "user", "content": STORY_Q}])
        assert story.choices[0].finish_reason == "content_filter"
        assert story.choices[0].message.content == "Once there was a small model."
        parts = api.chat.completions.create(model="webchat-model", stream=True,
                                            messages=[{"role": "user", "content": STORY_Q}])
        chunks = list(parts)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "MOSSLM-MODERATION-TEST" not in text and chunks[-1].choices[0].finish_reason == "content_filter"
        stages = [r["stage"] for r in rows(chat.store, "SELECT stage FROM moderation_events ORDER BY id")]
        assert stages == ["input", "output", "output"]
