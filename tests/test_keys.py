"""API keys, invitation codes, the serving database and per-key rate limits (real SQLite files)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mosslm.serve.keys import (AuthError, KeyInfo, KeysError, RateLimited, RateLimiter, any_keys, authenticate,
                               create_key, find_key, hash_key, list_keys, parse_expires, parse_rate, revoke)
from mosslm.serve.store import MIGRATIONS, SchemaTooNew, StoreError, default_data_dir, open_db, split_statements

REPO = Path(__file__).resolve().parents[1]


def moss(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOSSLM_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mosslm", "keys", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


@pytest.fixture
def store(tmp_path):
    with open_db(tmp_path / "serve") as s:
        yield s


def bearer(key: str) -> str:
    return f"Bearer {key}"


# --- the CLI, end to end ------------------------------------------------------------------

def test_cli_create_list_revoke(tmp_path):
    future = (date.today() + timedelta(days=30)).isoformat()
    made = moss(tmp_path, "create", "--note", "alice's laptop", "--rate", "60/min", "--tokens", "5000",
                "--expires", future)
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    assert key.startswith("moss-") and len(key) == 45 and " " not in key
    assert "60 requests/min" in made.stdout and "5000 tokens/min" in made.stdout
    assert f"{future}T23:59:59Z" in made.stdout
    invite = moss(tmp_path, "create", "--invite", "--rate", "10").stdout.splitlines()[-1]
    assert invite.startswith("moss-inv-")

    listed = moss(tmp_path, "list")
    assert listed.returncode == 0
    assert key[:12] in listed.stdout and invite[:12] in listed.stdout and "alice's laptop" in listed.stdout
    assert key not in listed.stdout and invite not in listed.stdout
    rows = json.loads(moss(tmp_path, "list", "--json").stdout)
    assert [r["prefix"] for r in rows] == [key[:12], invite[:12]]
    assert rows[0]["rate_per_min"] == 60 and rows[0]["tokens_per_min"] == 5000 and rows[0]["invite"] is False
    assert rows[1]["invite"] is True and rows[1]["state"] == "active" and rows[1]["revoked_at"] is None
    assert not any(key in json.dumps(r) for r in rows)

    # the CLI wrote to $MOSSLM_HOME/serve: the library reads the same database
    with open_db(tmp_path / "serve") as s:
        assert authenticate(s, bearer(key)).note == "alice's laptop"
    gone = moss(tmp_path, "revoke", key[:8])
    assert gone.returncode == 0, gone.stderr
    assert key[:12] in gone.stdout and "revoked" in gone.stdout
    assert "already revoked" in moss(tmp_path, "revoke", key[:12]).stdout
    rows = json.loads(moss(tmp_path, "list", "--json").stdout)
    assert rows[0]["state"] == "revoked" and rows[0]["revoked_at"] and rows[0]["last_used_at"]
    assert "revoked" in moss(tmp_path, "list").stdout
    with open_db(tmp_path / "serve") as s, pytest.raises(AuthError) as e:
        authenticate(s, bearer(key))
    assert e.value.status == 403


def test_cli_data_dir_and_empty_list(tmp_path):
    other = tmp_path / "elsewhere"
    assert moss(tmp_path, "list", "--data-dir", str(other)).stdout.startswith("no API keys")
    assert json.loads(moss(tmp_path, "list", "--json", "--data-dir", str(other)).stdout) == []
    key = moss(tmp_path, "create", "--data-dir", str(other)).stdout.splitlines()[-1]
    assert (other / "mosslm.db").is_file() and not (tmp_path / "serve").exists()
    assert key[:12] in moss(tmp_path, "list", "--data-dir", str(other)).stdout


@pytest.mark.parametrize("args, message", [
    (["create", "--rate", "fast"], "not a per-minute limit"),
    (["create", "--rate", "0"], "positive"),
    (["create", "--tokens=-5/min"], "positive"),
    (["create", "--expires", "2001-01-01"], "in the past"),
    (["create", "--expires", "next tuesday"], "not a date"),
    (["revoke", "moss-nothing"], "no key starts with"),
    (["revoke", "moss-"], "matches 2 keys"),
])
def test_cli_bad_input_exits_2(tmp_path, args, message):
    for _ in range(2):
        assert moss(tmp_path, "create").returncode == 0
    r = moss(tmp_path, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_cli_refuses_a_newer_database(tmp_path):
    (tmp_path / "serve").mkdir()
    with sqlite3.connect(tmp_path / "serve" / "mosslm.db") as raw:
        raw.execute("PRAGMA user_version = 99")
    r = moss(tmp_path, "list")
    assert r.returncode == 1 and "schema version 99" in r.stderr and "Traceback" not in r.stderr


# --- the database ------------------------------------------------------------------------

def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSSLM_HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / "serve"
    with open_db() as s:
        assert s.path == tmp_path / "home" / "serve" / "mosslm.db" and s.path.is_file()


def test_only_the_hash_is_stored(tmp_path, store):
    key, info = create_key(store, note="n")
    invite, _ = create_key(store, invite=True)
    store.close()
    blob = b"".join(p.read_bytes() for p in (tmp_path / "serve").iterdir() if p.is_file())
    assert key[:12].encode() in blob  # the prefix is there, for listings
    for k in (key, invite):
        assert k.encode() not in blob and k[12:].encode() not in blob


def test_wal_foreign_keys_busy_timeout_and_version(store):
    conn = store.conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == store.version
    cols = {r["name"] for r in conn.execute("PRAGMA table_info(api_keys)")}
    assert {"id", "prefix", "key_sha256", "note", "rate_per_min", "tokens_per_min", "expires_at", "invite",
            "created_at", "last_used_at", "revoked_at"} <= cols
    # another thread gets its own connection, with the same settings
    seen = []
    t = threading.Thread(target=lambda: seen.append((store.conn(), store.conn().execute("PRAGMA foreign_keys")
                                                     .fetchone()[0])))
    t.start()
    t.join()
    assert seen[0][0] is not conn and seen[0][1] == 1


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "serve" / "mosslm.db"
    open_db(tmp_path / "serve").close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew) as e:
        open_db(tmp_path / "serve")
    assert e.value.found == len(MIGRATIONS) + 1 and e.value.known == len(MIGRATIONS)
    assert "newer mosslm" in str(e.value)


def test_not_a_database(tmp_path):
    (tmp_path / "mosslm.db").write_text("hello, not sqlite " * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        open_db(tmp_path)


def test_appending_a_migration(tmp_path):
    with open_db(tmp_path) as s:
        key, _ = create_key(s, note="before")
    extra = """
        -- a later migration, appended like this one
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, note TEXT DEFAULT 'a;b');
        CREATE TABLE demo_sessions (id INTEGER PRIMARY KEY,
                               user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE);
        INSERT INTO users (name) VALUES ('root');
    """
    newer = [*MIGRATIONS, extra]
    with open_db(tmp_path, newer) as s:
        assert s.version == len(newer)
        assert [tuple(r) for r in s.execute("SELECT name, note FROM users")] == [("root", "a;b")]
        assert authenticate(s, bearer(key)).note == "before"  # old data kept
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
            s.execute("INSERT INTO demo_sessions (user_id) VALUES (42)")
    with open_db(tmp_path, newer) as s:  # applied once: no second 'root', no "already exists"
        assert s.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    with pytest.raises(SchemaTooNew):  # the older code refuses it now
        open_db(tmp_path)


def test_a_failing_migration_changes_nothing(tmp_path):
    open_db(tmp_path).close()
    bad = [*MIGRATIONS, "CREATE TABLE half (x); INSERT INTO nowhere VALUES (1);"]
    with pytest.raises(StoreError, match=f"migration {len(MIGRATIONS) + 1} failed"):
        open_db(tmp_path, bad)
    with open_db(tmp_path) as s:
        assert s.version == len(MIGRATIONS)
        assert s.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half'").fetchone()[0] == 0


def test_split_statements():
    script = """
        CREATE TABLE t (x TEXT DEFAULT ';');  -- a comment; with a semicolon
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'a;b'; END;
        /* trailing */
    """
    stmts = split_statements(script)
    assert len(stmts) == 2 and "CREATE TRIGGER" in stmts[1] and stmts[1].endswith("END;")
    with pytest.raises(StoreError, match="incomplete"):
        split_statements("CREATE TABLE t (x);  CREATE TABLE u (")


# --- keys ---------------------------------------------------------------------------------

def test_create_and_list(store):
    assert list_keys(store) == [] and not any_keys(store)
    key, info = create_key(store, note="ci", rate_per_min="30/min", tokens_per_min=1000,
                           expires="2999-01-31T12:00:00+02:00")
    assert key.startswith("moss-") and not key.startswith("moss-inv-") and info.prefix == key[:12]
    assert (info.rate_per_min, info.tokens_per_min, info.invite) == (30, 1000, False)
    assert info.expires_at == datetime(2999, 1, 31, 10, 0, tzinfo=timezone.utc)
    assert info.created_at.tzinfo is not None and info.last_used_at is None and info.revoked_at is None
    invite, inv = create_key(store, invite=True)
    assert invite.startswith("moss-inv-") and inv.invite and inv.rate_per_min is None
    assert list_keys(store) == [info, inv] and any_keys(store)
    assert len({create_key(store)[0] for _ in range(20)}) == 20


def test_create_rejects_bad_limits_and_past_expiry(store):
    for bad in (0, -1, "x", "1.5", True):
        with pytest.raises(KeysError):
            create_key(store, rate_per_min=bad)
    with pytest.raises(KeysError, match="in the past"):
        create_key(store, expires=date(2000, 1, 1))
    with pytest.raises(KeysError, match="in the past"):
        create_key(store, expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    assert list_keys(store) == []


def test_parse_helpers():
    assert parse_rate("60") == parse_rate("60/min") == parse_rate(" 60 / min ") == parse_rate(60) == 60
    assert parse_rate(None) is None
    now = datetime(2030, 5, 1, 12, tzinfo=timezone.utc)
    assert parse_expires("2030-05-01", now) == datetime(2030, 5, 1, 23, 59, 59, tzinfo=timezone.utc)
    assert parse_expires("2030-05-02T08:30", now) == datetime(2030, 5, 2, 8, 30, tzinfo=timezone.utc)
    assert parse_expires("2030-05-02T08:30:00Z", now) == datetime(2030, 5, 2, 8, 30, tzinfo=timezone.utc)
    with pytest.raises(KeysError):
        parse_expires("2030-04-30", now)


def test_revoke_by_prefix(store):
    a, ka = create_key(store, note="a")
    b, kb = create_key(store, note="b")
    with pytest.raises(KeysError, match="matches 2 keys"):
        revoke(store, "moss-")
    with pytest.raises(KeysError, match="no key starts with"):
        revoke(store, "moss-zzzzzzzzzzzz")
    with pytest.raises(KeysError):
        revoke(store, "  ")
    short = next(a[:n] for n in range(6, 13) if not b.startswith(a[:n]))
    done = revoke(store, short)
    assert done.id == ka.id and done.revoked_at is not None
    assert revoke(store, a).revoked_at == done.revoked_at  # the whole key works too; a second revoke is a no-op
    assert find_key(store, b[:12]).revoked_at is None
    assert any_keys(store)  # revoked keys still count: the server does not fall open
    revoke(store, b)
    assert any_keys(store) and all(k.state() == "revoked" for k in list_keys(store))


def test_authenticate(store):
    key, info = create_key(store, note="good", expires="2999-01-01")
    invite, _ = create_key(store, invite=True)
    assert authenticate(store, f"Bearer {key}").id == info.id
    assert authenticate(store, f"  bearer   {key} ").id == info.id
    assert authenticate(store, bearer(invite)).invite

    def refused(header, **kw):
        with pytest.raises(AuthError) as e:
            authenticate(store, header, **kw)
        return e.value.status, e.value.code

    assert refused(None) == (401, "missing_api_key")
    assert refused("") == (401, "missing_api_key")
    assert refused(f"Basic {key}") == (401, "invalid_authorization")
    assert refused("Bearer") == (401, "invalid_authorization")
    assert refused(key) == (401, "invalid_authorization")
    assert refused("Bearer moss-nope") == (401, "invalid_api_key")
    assert refused(bearer(key[:-1] + ("A" if key[-1] != "A" else "B"))) == (401, "invalid_api_key")  # same prefix
    assert refused(bearer(key[:12])) == (401, "invalid_api_key")
    assert refused(bearer(key), now=datetime(2999, 1, 2, tzinfo=timezone.utc)) == (403, "key_expired")
    assert authenticate(store, bearer(key), now=datetime(2999, 1, 1, 23, tzinfo=timezone.utc)).id == info.id
    revoke(store, key)
    assert refused(bearer(key)) == (403, "key_revoked")
    err = pytest.raises(AuthError, authenticate, store, bearer(key)).value
    assert key[:12] in err.message and key not in err.message and str(err) == err.message


def test_last_used_is_recorded_but_not_on_every_request(store):
    key, _ = create_key(store)
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert authenticate(store, bearer(key), now=t0).last_used_at == t0
    assert authenticate(store, bearer(key), now=t0 + timedelta(seconds=2)).last_used_at == t0
    assert find_key(store, key).last_used_at == t0
    later = t0 + timedelta(seconds=10)
    assert authenticate(store, bearer(key), now=later).last_used_at == later
    assert find_key(store, key).last_used_at == later


# --- rate limits --------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def key_info(id_: int, rate=None, tokens=None) -> KeyInfo:
    now = datetime.now(timezone.utc)
    return KeyInfo(id=id_, prefix=f"moss-test{id_:03d}", note=None, rate_per_min=rate, tokens_per_min=tokens,
                   expires_at=None, invite=False, created_at=now, last_used_at=None, revoked_at=None)


def test_requests_per_minute():
    clock = FakeClock()
    lim = RateLimiter(clock)
    k = key_info(1, rate=3)
    for _ in range(3):
        lim.check_request(k)
    with pytest.raises(RateLimited) as e:
        lim.check_request(k)
    assert e.value.limit_name == "requests" and e.value.retry_after_seconds == pytest.approx(20.0)
    assert e.value.retry_after_header == "20"
    clock.advance(19.0)
    with pytest.raises(RateLimited) as e:  # refusals do not use up the allowance
        lim.check_request(k)
    assert e.value.retry_after_seconds == pytest.approx(1.0)
    clock.advance(1.0)
    lim.check_request(k)
    other = key_info(2, rate=3)  # buckets are per key
    lim.check_request(other)
    clock.advance(3600)  # a long pause refills to one minute's worth, not more
    for _ in range(3):
        lim.check_request(k)
    with pytest.raises(RateLimited):
        lim.check_request(k)


def test_tokens_per_minute_deficit():
    clock = FakeClock()
    lim = RateLimiter(clock)
    k = key_info(1, rate=100, tokens=100)
    lim.check_request(k)
    lim.charge_tokens(k, 250)  # a long reply overshoots: the bucket is at -150
    with pytest.raises(RateLimited) as e:
        lim.check_request(k)
    assert e.value.limit_name == "tokens"
    assert e.value.retry_after_seconds == pytest.approx(151 * 60 / 100)  # deficit + 1 token at 100/min
    clock.advance(90.0)
    with pytest.raises(RateLimited) as e:
        lim.check_request(k)
    assert e.value.retry_after_seconds == pytest.approx(0.6)
    assert e.value.retry_after_header == "1"
    clock.advance(0.6)
    lim.check_request(k)
    lim.charge_tokens(k, 0)
    lim.charge_tokens(k, -5)
    lim.check_request(k)
    lim.forget(k)  # a fresh start
    lim.charge_tokens(k, 100)
    with pytest.raises(RateLimited):
        lim.check_request(k)


def test_unlimited_keys_are_never_refused():
    lim = RateLimiter(FakeClock())
    free = key_info(1)
    only_tokens = key_info(2, tokens=10**9)
    for _ in range(5000):
        lim.check_request(free)
        lim.charge_tokens(free, 10**6)
        lim.check_request(only_tokens)


# --- many threads at once -----------------------------------------------------------------

def test_threads_authenticate_and_charge_at_once(tmp_path):
    store = open_db(tmp_path)
    keys = [create_key(store, note=f"k{i}")[0] for i in range(4)]
    limited, limited_info = create_key(store, rate_per_min=50)
    clock = FakeClock()  # frozen: the limited key gets exactly its 50
    lim = RateLimiter(clock)
    errors, allowed, made = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(9)

    def client(i: int) -> None:
        try:
            start.wait()
            for j in range(60):
                info = authenticate(store, bearer(keys[(i + j) % len(keys)]))
                lim.check_request(info)
                lim.charge_tokens(info, 17)
                try:
                    lim.check_request(authenticate(store, bearer(limited)))
                    with lock:
                        allowed.append(1)
                except RateLimited:
                    pass
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    def admin() -> None:
        try:
            start.wait()
            for _ in range(20):
                made.append(create_key(store)[0])
                list_keys(store)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)] + [threading.Thread(target=admin)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(allowed) == limited_info.rate_per_min
    assert len(list_keys(store)) == 5 + 20
    # a second Store on the same file (as a second process would be) sees it all
    with open_db(tmp_path) as again:
        assert authenticate(again, bearer(made[-1])).prefix == made[-1][:12]
    store.close()


def test_a_keys_only_database_upgrades_to_the_web_chat_schema(tmp_path):
    with open_db(tmp_path, MIGRATIONS[:1]) as old:  # as the serving issue shipped it
        old.execute("INSERT INTO api_keys (prefix, key_sha256, created_at) VALUES (?, ?, '2026-01-01T00:00:00Z')",
                    ("moss-abcdefg", hash_key("moss-abcdefg" + "x" * 33)))
    with open_db(tmp_path) as s:
        assert s.version == len(MIGRATIONS) >= 2
        key = authenticate(s, bearer("moss-abcdefg" + "x" * 33))
        assert key.logging is True  # the column's default: logging stays on for existing keys
        assert s.execute("SELECT count(*) FROM conversations").fetchone()[0] == 0
