"""The conversation store: conversations, their message trees, plugin calls, feedback,
per-user settings and moderation events, in the serving database (see store.py).

Every function takes the user id (an API key's id; 0 for the open server's local
user) and sees only that user's rows: another user's conversation is "not found".
Writes are single transactions, so what a call returned is durable (WAL).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .keys import format_time, utcnow
from .render import reply_html
from .store import Store

TITLE_CHARS = 40
DEFAULT_TITLE = ""  # untitled: named after its first message


class NotFound(LookupError):
    """No such conversation or message for this user."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _now() -> str:
    return format_time(utcnow())


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


def conversation_dict(row) -> dict:
    return {"id": row["id"], "title": row["title"], "created_at": row["created_at"], "updated_at": row["updated_at"]}


# ---------------------------------------------------------------- conversations

def list_conversations(store: Store, user: int) -> list[dict]:
    rows = store.execute("SELECT * FROM conversations WHERE user_id = ? ORDER BY updated_at DESC, rowid DESC",
                         (user,)).fetchall()
    return [conversation_dict(r) for r in rows]


def create_conversation(store: Store, user: int, title: str | None = None) -> dict:
    cid, now = new_id("c"), _now()
    store.execute("INSERT INTO conversations (id, user_id, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                  (cid, user, title_from(title) if title else DEFAULT_TITLE, now, now))
    return get_conversation(store, user, cid)


def get_conversation(store: Store, user: int, cid: str) -> dict:
    row = store.execute("SELECT * FROM conversations WHERE id = ? AND user_id = ?", (cid, user)).fetchone()
    if row is None:
        raise NotFound(f"no conversation {cid!r}")
    return conversation_dict(row)


def rename_conversation(store: Store, user: int, cid: str, title: str) -> dict:
    cur = store.execute("UPDATE conversations SET title = ?, updated_at = ? WHERE id = ? AND user_id = ?",
                        (title_from(title), _now(), cid, user))
    if cur.rowcount == 0:
        raise NotFound(f"no conversation {cid!r}")
    return get_conversation(store, user, cid)


def delete_conversation(store: Store, user: int, cid: str) -> None:
    """Delete it with its messages, plugin calls and feedback (ON DELETE CASCADE)."""
    cur = store.execute("DELETE FROM conversations WHERE id = ? AND user_id = ?", (cid, user))
    if cur.rowcount == 0:
        raise NotFound(f"no conversation {cid!r}")


# ---------------------------------------------------------------- messages

def _message_row(store: Store, user: int, mid: str):
    row = store.execute("SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                        "WHERE m.id = ? AND c.user_id = ?", (mid, user)).fetchone()
    if row is None:
        raise NotFound(f"no message {mid!r}")
    return row


def message_dict(row, calls: list | None = None, feedback=None) -> dict:
    """A message as the API shows it (docs/web-api.md: Message)."""
    assistant = row["role"] == "assistant"
    sources = [tuple(s) for s in json.loads(row["sources"] or "[]")]
    plugin = None
    if assistant and row["plugin"] and (row["commands"] or (row["thoughts"] or "").strip() not in ("", "None")):
        plugin = {"thoughts": row["thoughts"], "commands": row["commands"], "results": row["results"],
                  "calls": [{"name": c["name"], "command": c["command"], "result": c["result"],
                             "duration_ms": c["duration_ms"]} for c in calls or []],
                  "sources": [{"n": i + 1, "title": t, "url": u} for i, (t, u) in enumerate(sources)]}
    return {"id": row["id"], "conversation_id": row["conversation_id"], "parent_id": row["parent_id"],
            "role": row["role"], "content": row["content"],
            "html": reply_html(row["content"], sources) if assistant else None,
            "status": row["status"], "plugin": plugin, "model": row["model"],
            "feedback": None if feedback is None else {"rating": feedback["rating"],
                                                       "better_answer": feedback["better_answer"],
                                                       "comment": feedback["comment"],
                                                       "updated_at": feedback["updated_at"]},
            "created_at": row["created_at"], "finished_at": row["finished_at"]}


def messages(store: Store, user: int, cid: str) -> list[dict]:
    """Every message of the conversation (all branches), oldest first."""
    get_conversation(store, user, cid)
    rows = store.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY created_at, rowid", (cid,)).fetchall()
    calls: dict[str, list] = {}
    for c in store.execute("SELECT p.* FROM plugin_calls p JOIN messages m ON m.id = p.message_id "
                           "WHERE m.conversation_id = ? ORDER BY p.message_id, p.position", (cid,)):
        calls.setdefault(c["message_id"], []).append(c)
    feedback = {f["message_id"]: f for f in store.execute(
        "SELECT f.* FROM feedback f JOIN messages m ON m.id = f.message_id WHERE m.conversation_id = ?", (cid,))}
    return [message_dict(r, calls.get(r["id"]), feedback.get(r["id"])) for r in rows]


def get_message(store: Store, user: int, mid: str) -> dict:
    row = _message_row(store, user, mid)
    calls = store.execute("SELECT * FROM plugin_calls WHERE message_id = ? ORDER BY position", (mid,)).fetchall()
    fb = store.execute("SELECT * FROM feedback WHERE message_id = ?", (mid,)).fetchone()
    return message_dict(row, calls, fb)


def path_to(store: Store, user: int, mid: str | None) -> list:
    """The rows from the conversation's first message down to `mid` (the history a reply sees),
    in one query: a recursive walk up the parent links."""
    if mid is None:
        return []
    rows = store.execute(
        "WITH RECURSIVE up(id, depth) AS (SELECT ?, 0 UNION ALL "
        "SELECT m.parent_id, up.depth + 1 FROM messages m JOIN up ON m.id = up.id WHERE m.parent_id IS NOT NULL) "
        "SELECT m.* FROM up JOIN messages m ON m.id = up.id JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.user_id = ? ORDER BY up.depth DESC", (mid, user)).fetchall()
    if not rows or rows[-1]["id"] != mid:
        raise NotFound(f"no message {mid!r}")
    return rows


def add_user_message(store: Store, user: int, cid: str, parent_id: str | None, content: str) -> dict:
    """Store the user's message (durable when this returns); the conversation is titled after
    its first message and moves to the top of the list."""
    mid, now = new_id("m"), _now()
    with store.transaction() as conn:
        conv = conn.execute("SELECT * FROM conversations WHERE id = ? AND user_id = ?", (cid, user)).fetchone()
        if conv is None:
            raise NotFound(f"no conversation {cid!r}")
        if parent_id is not None:
            parent = conn.execute("SELECT role FROM messages WHERE id = ? AND conversation_id = ?",
                                  (parent_id, cid)).fetchone()
            if parent is None or parent["role"] != "assistant":
                raise NotFound(f"no reply {parent_id!r} in this conversation to answer")
        conn.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at, "
                     "finished_at) VALUES (?, ?, ?, 'user', ?, 'complete', ?, ?)", (mid, cid, parent_id, content, now, now))
        title = conv["title"] or title_from(content)
        conn.execute("UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?", (title, now, cid))
    return get_message(store, user, mid)


def start_reply(store: Store, user: int, user_message_id: str, model: str, params: dict) -> str:
    """A reply row in status 'streaming', child of the user message; returns its id."""
    parent = _message_row(store, user, user_message_id)
    if parent["role"] != "user":
        raise NotFound(f"{user_message_id!r} is not a user message")
    mid = new_id("m")
    store.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, status, model, params, "
                  "created_at) VALUES (?, ?, ?, 'assistant', '', 'streaming', ?, ?, ?)",
                  (mid, parent["conversation_id"], user_message_id, model, json.dumps(params, ensure_ascii=False),
                   _now()))
    return mid


@dataclass
class ReplyState:
    """What a streaming reply has so far; saved as it grows and when it ends."""
    content: str = ""
    plugin: bool = False
    thoughts: str | None = None
    commands: str | None = None
    results: str | None = None
    sources: list | None = None
    protocol_text: str | None = None
    finish_reason: str | None = None


def save_reply(store: Store, mid: str, state: ReplyState, status: str = "streaming",
               calls: list[dict[str, Any]] = ()) -> None:
    """Write the reply as it is now; a final status also records its plugin calls."""
    with store.transaction() as conn:
        conn.execute("UPDATE messages SET content = ?, plugin = ?, thoughts = ?, commands = ?, results = ?, "
                     "sources = ?, protocol_text = ?, finish_reason = ?, status = ?, finished_at = ? WHERE id = ?",
                     (state.content, int(state.plugin), state.thoughts, state.commands, state.results,
                      json.dumps(state.sources or [], ensure_ascii=False), state.protocol_text, state.finish_reason,
                      status, None if status == "streaming" else _now(), mid))
        if status != "streaming":
            conn.execute("DELETE FROM plugin_calls WHERE message_id = ?", (mid,))
            for i, c in enumerate(calls):
                conn.execute("INSERT INTO plugin_calls (message_id, position, name, command, result, started_at, "
                             "duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (mid, i, c["name"], c["command"], c.get("result"), c["started_at"], c["duration_ms"]))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = "
                         "(SELECT conversation_id FROM messages WHERE id = ?)", (_now(), mid))


def mark_interrupted(store: Store) -> int:
    """Replies left 'streaming' by a server that died become 'incomplete'; returns how many."""
    return store.execute("UPDATE messages SET status = 'incomplete', finished_at = ? WHERE status = 'streaming'",
                         (_now(),)).rowcount


# ---------------------------------------------------------------- feedback, settings, moderation

def set_feedback(store: Store, user: int, mid: str, rating: str | None, better_answer: str | None,
                 comment: str | None) -> dict:
    row = _message_row(store, user, mid)
    if row["role"] != "assistant":
        raise NotFound(f"{mid!r} is not a reply")
    now = _now()
    store.execute("INSERT INTO feedback (message_id, user_id, rating, better_answer, comment, created_at, updated_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, "
                  "better_answer = excluded.better_answer, comment = excluded.comment, updated_at = excluded.updated_at",
                  (mid, user, rating, better_answer or None, comment or None, now, now))
    return get_message(store, user, mid)["feedback"]


def get_settings(store: Store, user: int) -> dict:
    row = store.execute("SELECT settings FROM user_settings WHERE user_id = ?", (user,)).fetchone()
    return json.loads(row["settings"]) if row else {}


def put_settings(store: Store, user: int, settings: dict) -> dict:
    store.execute("INSERT INTO user_settings (user_id, settings, updated_at) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                  "DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                  (user, json.dumps(settings, ensure_ascii=False), _now()))
    return settings


def record_moderation(store: Store, user: int, stage: str, rule: str, text: str | None,
                      conversation_id: str | None = None, message_id: str | None = None) -> None:
    store.execute("INSERT INTO moderation_events (user_id, conversation_id, message_id, stage, rule, text, created_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)", (user, conversation_id, message_id, stage, rule, text, _now()))
