"""The serving database: one SQLite file, `DATA_DIR/mosslm.db`, with ordered migrations.

Schema changes are migrations: SQL scripts in `MIGRATIONS`, applied in order, each once,
each in its own transaction together with the bump of `PRAGMA user_version` (the schema
version, = how many migrations have been applied). To change the schema, APPEND a script
to `MIGRATIONS`, e.g.

    MIGRATIONS.append('''
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    ''')

(or add it to the list literal below). Never edit or reorder a migration that has shipped:
databases out there have already run it; write a new one that alters what it made. A
database whose version is higher than `len(MIGRATIONS)` was written by a newer mosslm and
is refused (`SchemaTooNew`), not used.

Thread safety: a `Store` hands each thread its own connection (`Store.conn()`), so a
multi-threaded server can share one `Store`. WAL journal mode lets readers run while one
writer writes; `busy_timeout` makes a writer wait for another instead of failing at once.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..paths import home

DB_NAME = "mosslm.db"
BUSY_TIMEOUT_MS = 5000

MIGRATIONS: list[str] = [
    # 1: API keys and invitation codes. Only a SHA-256 of the key is kept; `prefix` (its first
    # 12 characters) identifies it in listings. Times are UTC ISO 8601 text ("...Z").
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        prefix TEXT NOT NULL UNIQUE,
        key_sha256 TEXT NOT NULL UNIQUE,
        note TEXT,
        rate_per_min INTEGER CHECK (rate_per_min IS NULL OR rate_per_min > 0),
        tokens_per_min INTEGER CHECK (tokens_per_min IS NULL OR tokens_per_min > 0),
        expires_at TEXT,
        invite INTEGER NOT NULL DEFAULT 0 CHECK (invite IN (0, 1)),
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );
    """,
    # 2: the web chat and the data flywheel. A user is an API key (`api_keys.id`); user 0 is the
    # one local user of a server without keys (`--auth none`). `logging` = 0: the key's holder
    # declined logging; their conversations live only in their browser, never here.
    """
    ALTER TABLE api_keys ADD COLUMN logging INTEGER NOT NULL DEFAULT 1 CHECK (logging IN (0, 1));

    -- Browser sessions: an invitation code traded for a cookie. Only the token's SHA-256 is kept.
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        key_id INTEGER NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        last_seen_at TEXT
    );

    CREATE TABLE user_settings (
        user_id INTEGER PRIMARY KEY,
        settings TEXT NOT NULL,            -- JSON: plugins, temperature, max_tokens, system_prompt
        updated_at TEXT NOT NULL
    );

    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,               -- "c-" + 24 hex
        user_id INTEGER NOT NULL,
        title TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX conversations_by_user ON conversations (user_id, updated_at);

    -- The messages of a conversation form a tree: a regenerated reply is a second child of its
    -- user message, an edited-and-resent message a second child of the reply before it.
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,               -- "m-" + 24 hex
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id TEXT REFERENCES messages(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,             -- user: the text as typed; assistant: the reply (so far)
        status TEXT NOT NULL CHECK (status IN ('complete', 'streaming', 'stopped', 'incomplete', 'blocked', 'error')),
        plugin INTEGER NOT NULL DEFAULT 0 CHECK (plugin IN (0, 1)),
        thoughts TEXT,                     -- assistant plugin turn: the MOSS fields as generated
        commands TEXT,
        results TEXT,
        sources TEXT,                      -- JSON [[title, url], ...]: what the reply's citations <|n|> point to
        protocol_text TEXT,                -- assistant: the exact MOSS text of the turn (user line + reply fields)
        finish_reason TEXT,
        model TEXT,
        params TEXT,                       -- JSON: sampling parameters and plugins of this reply
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at);
    CREATE INDEX messages_by_parent ON messages (parent_id);

    CREATE TABLE plugin_calls (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,         -- 0, 1, ... in the order the commands were given
        name TEXT NOT NULL,
        command TEXT NOT NULL,             -- e.g. Calculate("37*91")
        result TEXT,                       -- the Results block it produced (NULL: no result)
        started_at TEXT NOT NULL,
        duration_ms REAL NOT NULL
    );
    CREATE INDEX plugin_calls_by_message ON plugin_calls (message_id);

    -- One rating per reply, changeable; a better answer and a comment are optional.
    CREATE TABLE feedback (
        message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        rating TEXT CHECK (rating IS NULL OR rating IN ('up', 'down')),
        better_answer TEXT,
        comment TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );

    -- What moderation blocked. No foreign keys: the record outlives a deleted conversation.
    -- `text` is NULL for users with logging off.
    CREATE TABLE moderation_events (
        id INTEGER PRIMARY KEY,
        user_id INTEGER NOT NULL,
        conversation_id TEXT,
        message_id TEXT,
        stage TEXT NOT NULL CHECK (stage IN ('input', 'output')),
        rule TEXT NOT NULL,                -- e.g. "words:violence" or "classifier:mymod.check"
        text TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX moderation_by_time ON moderation_events (created_at);
    """,
]


class StoreError(Exception):
    """The serving database cannot be opened or upgraded."""


class SchemaTooNew(StoreError):
    def __init__(self, path: Path, found: int, known: int):
        self.path, self.found, self.known = path, found, known
        super().__init__(f"{path} has schema version {found}, but this mosslm knows only up to {known}; "
                         "it was written by a newer mosslm: upgrade mosslm (or use another --data-dir)")


def default_data_dir() -> Path:
    """Where the server keeps its database: $MOSSLM_HOME/serve."""
    return home() / "serve"


def split_statements(script: str) -> list[str]:
    """The SQL statements of a script, each complete (semicolons inside strings,
    comments and triggers' BEGIN...END do not split)."""
    out, start = [], 0
    for i, ch in enumerate(script):
        if ch == ";" and sqlite3.complete_statement(script[start:i + 1]):
            out.append(script[start:i + 1].strip())
            start = i + 1
    rest = script[start:].strip()
    if rest and not _only_comments(rest):
        raise StoreError(f"migration has an incomplete SQL statement: {rest[:80]!r}")
    return [s for s in out if not _only_comments(s.rstrip(";"))]


def _only_comments(sql: str) -> bool:
    return not re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S).strip()


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, migrations: Sequence[str], path: Path | str = "database") -> int:
    """Apply the migrations `conn`'s database has not run yet; return its schema version.
    Each one runs in a BEGIN IMMEDIATE transaction with its version bump, so a failing
    migration leaves the database as it was and two processes never apply one twice."""
    known = len(migrations)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)
            if version > known:
                raise SchemaTooNew(Path(path), version, known)
            if version == known:
                conn.execute("COMMIT")
                return version
            for stmt in split_statements(migrations[version]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{path}: migration {version + 1} failed: {e}") from e
            raise


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the settings every user of the database needs."""
    # autocommit (isolation_level=None): transactions are explicit, see Store.transaction().
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power cut loses at most the last commits
    return conn


class Store:
    """The serving database. Share one per process; each thread gets its own connection."""

    def __init__(self, path: Path, migrations: Sequence[str] = MIGRATIONS):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        try:
            conn = self.conn()
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot use WAL journal mode (got {mode!r})")
            self.version = migrate(conn, migrations, self.path)
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"{self.path}: not a usable SQLite database: {e}") from e
        except BaseException:
            self.close()
            raise

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (made on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN (IMMEDIATE: take the write lock now) ... COMMIT, or ROLLBACK on any error."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence | dict = ()) -> sqlite3.Cursor:
        """One statement on this thread's connection (autocommit)."""
        return self.conn().execute(sql, params)

    def close(self) -> None:
        """Close every thread's connection; the Store is unusable afterwards."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_db(data_dir: Path | str | None = None, migrations: Sequence[str] = MIGRATIONS) -> Store:
    """Open (creating it and its folder if needed) `data_dir/mosslm.db`, migrated to the
    newest schema; data_dir defaults to $MOSSLM_HOME/serve."""
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the data folder {data_dir}: {e}") from e
    return Store(data_dir / DB_NAME, migrations)
