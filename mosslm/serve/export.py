"""The data flywheel: training data from the web chat's tables (`moss data export`).

The web chat keeps each conversation as a message tree (docs/web-api.md): a
regenerated reply is a second assistant child of its user message. Users rate
replies and may write a better answer. Every record written here passes
`moss data check` (each is validated with its readers first); the file is
written atomically.

SFT (`moss`, `sharegpt`, `openai`, by `protocol`'s writers): one record per
exported reply, the path from the root to it; earlier replies on the path
keep their text, or their better answer when they have one. `rating`:
`up` = liked replies and every reply with a better answer (a human wrote it);
`down` = the better answers of disliked replies only; `any` = every reply but
the disliked ones without a correction. A better answer replaces only the
reply text (a plugin turn keeps thoughts, commands, results). A reply counts
when `complete`, or `stopped`/`incomplete` with a better answer; a path
through a blocked or failed reply, or a message moderation recorded, is skipped.

DPO (`dpo`, see mosslm/data/preferences.py for the record): exactly two rules:
(a) `better_answer`: a disliked reply's better answer (chosen) against that
    reply (rejected);
(b) `rated_siblings`: a liked reply (its better answer if any) against a
    disliked sibling: two assistant children of one user message rated up/down.
Nothing else is a pair; a better answer on a liked reply is not (the user
liked both). The rejected reply may be `complete`, `stopped` or `incomplete`
(the user saw and disliked it); siblings made under different settings (meta
instructions) are no pair; `rating` does not apply.

Every text (user, reply, thoughts, commands, results, meta) is PII-masked by
default (`mosslm.data.pii`); user-written text is escaped as the chat escapes
it. `since` keeps replies created at or after it (a pair: its newest reply),
`model` those of that model (a pair: both).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .. import protocol
from ..data.pii import Masker
from ..data.preferences import read_preference
from ..paths import atomic_file
from ..protocol import Conversation, ProtocolError, Turn
from .store import DB_NAME, MIGRATIONS, SchemaTooNew, Store

FORMATS = ("moss", "sharegpt", "openai", "dpo")
RATINGS = ("up", "down", "any")
REJECTABLE = ("complete", "stopped", "incomplete")
WEB_CHAT_SCHEMA = 2  # the migration that made the web chat tables


class ExportError(ValueError):
    """Bad input to an export: no database, an unknown format, a bad --since."""


@dataclass
class ExportStats:
    conversations: int = 0                            # conversations seen
    records: int = 0                                  # records written
    pairs: Counter = field(default_factory=Counter)   # dpo: pairs by rule
    masked: Counter = field(default_factory=Counter)  # PII masks written, by kind
    skipped: Counter = field(default_factory=Counter)  # candidates left out, by reason
    problems: list[str] = field(default_factory=list)  # the first invalid records' reasons

    def summary(self) -> str:
        def show(c: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"
        pairs = f"; pairs: {show(self.pairs)}" if self.pairs else ""
        return (f"{self.records} records from {self.conversations} conversations{pairs}; "
                f"PII masked: {show(self.masked)}; skipped: {show(self.skipped)}")


@dataclass
class _Msg:
    """A message row with its feedback: `rating` and `better` (the better answer, None when empty)."""

    id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    plugin: bool
    thoughts: str | None
    commands: str | None
    results: str | None
    results_inline: bool  # the one-line Results form, as the stored protocol text shows
    model: str | None
    params: dict
    created_at: datetime | None
    rating: str | None
    better: str | None


def parse_since(since: str | None) -> datetime | None:
    """A YYYY-MM-DD date (from its start) or an ISO datetime, as an aware UTC datetime."""
    if since is None:
        return None
    try:
        return _time(since)
    except ValueError:
        raise ExportError(f"--since {since!r} is not a date (YYYY-MM-DD) or an ISO datetime") from None


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def _open(source: Store | str | os.PathLike) -> tuple[sqlite3.Connection, bool]:
    """A connection and whether it is ours; a folder's database is opened read-only, never created."""
    if isinstance(source, Store):
        return source.conn(), False
    path = Path(source).expanduser() / DB_NAME
    if not path.is_file():
        raise ExportError(f"no database in {path.parent}: {path} does not exist (use the --data-dir of `moss serve`)")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SchemaTooNew(path, version, len(MIGRATIONS))
        if version < WEB_CHAT_SCHEMA:
            raise ExportError(f"{path}: schema version {version} has no web chat tables (run `moss serve` once)")
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ExportError(f"{path}: not a usable SQLite database: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn, True


def _messages(conn: sqlite3.Connection, conversation_id: str) -> list[_Msg]:
    rows = conn.execute(
        "SELECT m.*, f.rating AS f_rating, f.better_answer AS f_better FROM messages m "
        "LEFT JOIN feedback f ON f.message_id = m.id WHERE m.conversation_id = ? ORDER BY m.created_at, m.id",
        (conversation_id,)).fetchall()
    out = []
    for r in rows:
        results = r["results"] or None
        if r["plugin"] and results is None:  # rebuild the Results block from the plugin calls
            calls = conn.execute("SELECT name, result FROM plugin_calls WHERE message_id = ? AND result IS NOT NULL "
                                 "ORDER BY position", (r["id"],)).fetchall()
            results = protocol.order_results([(protocol.Command(c[0], ""), c[1]) for c in calls])
        inline = bool(results and r["protocol_text"]
                      and f"{protocol.RESULTS}: {results}{protocol.EOR}" in r["protocol_text"])
        better = (r["f_better"] or "").strip() or None
        out.append(_Msg(r["id"], r["parent_id"], r["role"], r["content"], r["status"], bool(r["plugin"]),
                        r["thoughts"], r["commands"], results, inline, r["model"], _json(r["params"]),
                        _maybe_time(r["created_at"]), r["f_rating"], better))
    return out


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _maybe_time(text: str | None) -> datetime | None:
    try:
        return _time(text) if text else None
    except ValueError:
        return None


def _meta(params: dict) -> str:
    """The meta instruction of a reply: the exact one its params recorded (`meta`), else rebuilt from
    its system prompt and plugins, else the moss preset's."""
    for key in ("meta", "meta_instruction"):
        if isinstance(params.get(key), str) and params[key]:
            return params[key]
    names = {n.lower(): n for n in protocol.PLUGINS}
    plugins = [names[p.lower()] for p in params.get("plugins") or [] if isinstance(p, str) and p.lower() in names]
    if isinstance(params.get("system_prompt"), str) and params["system_prompt"].strip():
        text = params["system_prompt"].rstrip("\n") + "\n"
        return text + protocol.capability_lines(plugins) if plugins else text
    preset = params.get("preset") if params.get("preset") in protocol.PRESETS else "moss"
    return protocol.meta_instruction(preset, plugins)


class _Cleaner(Masker):
    """Masks (unless off) and, for user-written text, escapes; counts wait in `take()` until a record is written."""

    def __init__(self, mask: bool):
        super().__init__()
        self.mask = mask

    def __call__(self, text: str | None, user: bool = False) -> str | None:
        if text is None:
            return None
        text = super().__call__(text) if self.mask else text
        return protocol.escape(text) if user else text


def _turn(human: str, reply: _Msg, clean: _Cleaner, better: bool) -> Turn:
    """A Turn from the (cleaned) user text and a reply; `better`: the reply text is the better answer."""
    text = clean(reply.better, user=True) if better else clean(reply.content)
    turn = Turn(human=human, reply=text)
    if reply.plugin:
        turn.plugin, turn.thoughts, turn.commands = True, clean(reply.thoughts), clean(reply.commands)
        turn.results, turn.results_inline = clean(reply.results), reply.results_inline
    return turn


def _history(user: _Msg, by_id: dict[str, _Msg], flagged: set[str], clean: _Cleaner) -> list[Turn] | None:
    """The turns before `user` (root first), or None when the path cannot be trained on."""
    pairs: list[tuple[_Msg, _Msg]] = []
    node = by_id.get(user.parent_id) if user.parent_id else None
    while node is not None:
        parent = by_id.get(node.parent_id) if node.parent_id else None
        if node.role != "assistant" or parent is None or parent.role != "user" or parent.status == "blocked":
            return None
        if node.status not in ("complete", "stopped", "incomplete") and not node.better:
            return None
        if {node.id, parent.id} & flagged:
            return None
        pairs.append((parent, node))
        node = by_id.get(parent.parent_id) if parent.parent_id else None
    if (user.parent_id and not pairs) or user.id in flagged or user.status == "blocked":
        return None
    return [_turn(clean(u.content, user=True), a, clean, better=a.better is not None) for u, a in reversed(pairs)]


def _sft_selected(m: _Msg, rating: str) -> bool:
    if not (m.status == "complete" or (m.status in ("stopped", "incomplete") and m.better)):
        return False
    if rating == "up":
        return m.rating == "up" or m.better is not None
    if rating == "down":
        return m.rating == "down" and m.better is not None
    return m.better is not None or m.rating != "down"


def _sft(msgs: list[_Msg], cid: str, fmt: str, rating: str, ok, flagged: set[str],
         clean: _Cleaner) -> Iterator[tuple[Any, str | None]]:
    by_id = {m.id: m for m in msgs}
    for m in msgs:
        if m.role != "assistant" or not _sft_selected(m, rating) or not ok(m):
            continue
        user = by_id.get(m.parent_id or "")
        history = _history(user, by_id, flagged, clean) if user is not None and user.role == "user" else None
        if history is None or m.id in flagged:
            clean.take()
            yield None, "unusable path"
            continue
        source = {"conversation_id": cid, "message_id": m.id, "rating": m.rating,
                  "better_answer": m.better is not None, "model": m.model}
        turns = history + [_turn(clean(user.content, user=True), m, clean, better=m.better is not None)]
        conv = Conversation(clean(_meta(m.params)), turns, m.id, {"source": source})
        yield protocol.write_record(conv, fmt), None


def _answer(meta: str, turn: Turn) -> dict:
    return protocol.to_openai(Conversation(meta, [turn]))["messages"][-1]


def _dpo(msgs: list[_Msg], cid: str, ok, flagged: set[str], clean: _Cleaner) -> Iterator[tuple[Any, str | None]]:
    by_id = {m.id: m for m in msgs}
    for user in (m for m in msgs if m.role == "user"):
        kids = [m for m in msgs if m.parent_id == user.id and m.role == "assistant" and m.id not in flagged]
        rule_a = [(m, m, "better_answer") for m in kids
                  if m.rating == "down" and m.better and m.status in REJECTABLE and ok(m)]
        liked = [m for m in kids if m.rating == "up" and _sft_selected(m, "up")]
        rule_b = [(good, bad, "rated_siblings") for good in liked for bad in kids
                  if bad.rating == "down" and bad.status in REJECTABLE and ok(good, bad)]
        if not rule_a and not rule_b:
            continue
        history = _history(user, by_id, flagged, clean)
        if history is None:
            clean.take()
            yield None, "unusable path"
            continue
        human = clean(user.content, user=True)
        base = clean.take()  # the prompt's masks count once per pair written
        for good, bad, reason in rule_a + rule_b:
            if _meta(good.params) != _meta(bad.params):
                yield None, "different settings"
                continue
            meta = clean(_meta(bad.params))
            prompt = protocol.to_openai(Conversation(meta, history + [Turn(human)]))
            chosen = _answer(meta, _turn(human, good, clean, better=good.better is not None))
            rejected = _answer(meta, _turn(human, bad, clean, better=False))
            clean.counts.update(base)
            yield {"prompt": prompt["messages"], "chosen": [chosen], "rejected": [rejected],
                   "source": {"conversation_id": cid, "prompt_message_id": user.id, "chosen_message_id": good.id,
                              "rejected_message_id": bad.id, "reason": reason}}, reason


def export(store_or_data_dir: Store | str | os.PathLike, fmt: str, out_path: str | os.PathLike,
           since: str | None = None, rating: str = "any", mask: bool = True, model: str | None = None) -> ExportStats:
    """Write the web chat's rated conversations to `out_path` as `fmt` (moss, sharegpt, openai, dpo)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if rating not in RATINGS:
        raise ExportError(f"unknown rating {rating!r}; choose from {', '.join(RATINGS)}")
    if fmt == "dpo" and rating != "any":
        raise ExportError("--rating does not apply to dpo: its pairs are made of both ratings")
    start = parse_since(since)

    def ok(*replies: _Msg) -> bool:
        """The --model and --since filters: every reply of that model, the newest created since `start`."""
        if model is not None and any(m.model != model for m in replies):
            return False
        times = [m.created_at for m in replies if m.created_at is not None]
        return start is None or (bool(times) and max(times) >= start)

    conn, own = _open(store_or_data_dir)
    stats, clean = ExportStats(), _Cleaner(mask)
    try:
        conn.execute("BEGIN")  # one snapshot, however the server writes meanwhile
        flagged = {r[0] for r in conn.execute("SELECT DISTINCT message_id FROM moderation_events "
                                              "WHERE message_id IS NOT NULL")}
        with atomic_file(out_path) as f:
            for (cid,) in conn.execute("SELECT id FROM conversations ORDER BY created_at, id").fetchall():
                stats.conversations += 1
                msgs = _messages(conn, cid)
                made = _dpo(msgs, cid, ok, flagged, clean) if fmt == "dpo" else \
                    _sft(msgs, cid, fmt, rating, ok, flagged, clean)
                for record, note in made:
                    if record is None:
                        stats.skipped[note] += 1
                        continue
                    try:
                        _validate(record, fmt)
                    except ProtocolError as e:
                        clean.take()
                        stats.skipped["invalid"] += 1
                        if len(stats.problems) < 10:
                            stats.problems.append(f"{cid}: {e}")
                        continue
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    stats.records += 1
                    stats.masked.update(clean.take())
                    if fmt == "dpo":
                        stats.pairs[note] += 1
    except sqlite3.DatabaseError as e:
        raise ExportError(f"cannot read the web chat tables: {e}") from e
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if own:
            conn.close()
    return stats


def _validate(record: Any, fmt: str) -> None:
    """What `moss data check` would say about the record: raise ProtocolError on an error."""
    if fmt == "dpo":
        read_preference(record)
    else:
        protocol.parse_record(record)
