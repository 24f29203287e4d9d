"""API keys and invitation codes for `moss serve`, and per-key rate limits.

A key is `moss-` + 40 URL-safe random characters (an invitation code: `moss-inv-` + 40).
The database keeps its first 12 characters (`prefix`, shown in listings and used to
revoke it) and its SHA-256, never the key itself.

The server calls `authenticate(store, request.headers.get("authorization"))` on each
request (when `any_keys(store)`), then `limiter.check_request(key)` before generating and
`limiter.charge_tokens(key, n)` after; `AuthError` and `RateLimited` carry what the HTTP
reply needs (status / Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone
from typing import Callable

from .store import Store

KEY_PREFIX = "moss-"
INVITE_PREFIX = "moss-inv-"
KEY_RANDOM_CHARS = 40
PREFIX_LEN = 12
LAST_USED_EVERY_S = 5.0
_EPS = 1e-9  # float slack: waiting exactly retry_after_seconds is enough  # authenticate() writes last_used_at at most this often per key


class KeysError(ValueError):
    """Bad input to a key operation: an unknown or ambiguous prefix, a bad limit or date."""


class AuthError(Exception):
    """A request is not authorized. status: 401 (no/unknown key) or 403 (revoked, expired);
    code: a short machine-readable reason; message: for the client."""

    def __init__(self, status: int, code: str, message: str):
        self.status, self.code, self.message = status, code, message
        super().__init__(message)


class RateLimited(Exception):
    """A key is over a limit. retry_after_seconds: when the request would be allowed;
    limit_name: "requests" (per minute) or "tokens" (per minute)."""

    def __init__(self, retry_after_seconds: float, limit_name: str):
        self.retry_after_seconds, self.limit_name = retry_after_seconds, limit_name
        super().__init__(f"rate limit reached ({limit_name} per minute); retry after {retry_after_seconds:.1f}s")

    @property
    def retry_after_header(self) -> str:
        """The value of an HTTP Retry-After header: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_seconds)))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class KeyInfo:
    """One key's row, without the key. Times are aware UTC datetimes."""

    id: int
    prefix: str
    note: str | None
    rate_per_min: int | None
    tokens_per_min: int | None
    expires_at: datetime | None
    invite: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    logging: bool = True  # False: the holder declined logging; the web chat keeps nothing of theirs

    def state(self, now: datetime | None = None) -> str:
        """"revoked", "expired" or "active"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and (now or utcnow()) >= self.expires_at:
            return "expired"
        return "active"

    def to_dict(self, now: datetime | None = None) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = format_time(v)
        d["state"] = self.state(now)
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "KeyInfo":
        return cls(id=row["id"], prefix=row["prefix"], note=row["note"], rate_per_min=row["rate_per_min"],
                   tokens_per_min=row["tokens_per_min"], expires_at=parse_time(row["expires_at"]),
                   invite=bool(row["invite"]), created_at=parse_time(row["created_at"]),
                   last_used_at=parse_time(row["last_used_at"]), revoked_at=parse_time(row["revoked_at"]),
                   logging=bool(row["logging"]) if "logging" in row.keys() else True)

    @property
    def name(self) -> str:
        """How the web chat shows its holder: the note, or the prefix."""
        return self.note or f"{self.prefix}..."


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_rate(text: str | int | None) -> int | None:
    """A per-minute limit: 60, "60" or "60/min" -> 60; None -> None (unlimited)."""
    if text is None or isinstance(text, int):
        n = text
    else:
        s = text.strip().lower().replace(" ", "")
        for suffix in ("/min", "/minute", "/m"):
            if s.endswith(suffix):
                s = s[: -len(suffix)]
                break
        try:
            n = int(s)
        except ValueError:
            raise KeysError(f"{text!r} is not a per-minute limit; write e.g. 60 or 60/min") from None
    if n is not None and (isinstance(n, bool) or n <= 0):
        raise KeysError(f"a per-minute limit must be a positive whole number, not {text!r}")
    return n


def parse_expires(value: str | date | datetime | None, now: datetime | None = None) -> datetime | None:
    """When a key stops working, as an aware UTC datetime. A date (or "YYYY-MM-DD") means
    the key works through that day, UTC: it expires at 23:59:59 UTC. An ISO
    datetime without a zone is UTC. A time not in the future is an error."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise KeysError(f"{text!r} is not a date; write YYYY-MM-DD or an ISO datetime "
                            "such as 2026-12-31T18:00:00Z") from None
    if isinstance(value, datetime):
        t = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        shown = format_time(t)
    else:
        t = datetime(value.year, value.month, value.day, 23, 59, 59, tzinfo=timezone.utc)
        shown = value.isoformat()
    t = t.astimezone(timezone.utc).replace(microsecond=0)
    if t <= (now or utcnow()):
        raise KeysError(f"the expiry {shown} is in the past")
    return t


def create_key(store: Store, note: str | None = None, rate_per_min: int | str | None = None,
               tokens_per_min: int | str | None = None, expires: str | date | datetime | None = None,
               invite: bool = False, logging: bool = True) -> tuple[str, KeyInfo]:
    """Make a key (or, invite=True, an invitation code); return it (shown once, never
    stored) and its row. logging=False: the web chat keeps none of its holder's conversations
    (consent). Raises KeysError for a bad limit or an expiry in the past."""
    rate, tokens = parse_rate(rate_per_min), parse_rate(tokens_per_min)
    expires_at = parse_expires(expires)
    head = INVITE_PREFIX if invite else KEY_PREFIX
    for _ in range(20):  # an invitation's prefix has only 3 random characters: retry on a clash
        key = head + secrets.token_urlsafe(KEY_RANDOM_CHARS)[:KEY_RANDOM_CHARS]
        try:
            with store.transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO api_keys (prefix, key_sha256, note, rate_per_min, tokens_per_min, expires_at, "
                    "invite, created_at, logging) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key[:PREFIX_LEN], hash_key(key), note, rate, tokens,
                     format_time(expires_at) if expires_at else None, int(invite), format_time(utcnow()),
                     int(logging)))
                row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (cur.lastrowid,)).fetchone()
            return key, KeyInfo.from_row(row)
        except sqlite3.IntegrityError:
            continue
    raise KeysError("could not find a free key prefix; too many keys share it")


def list_keys(store: Store) -> list[KeyInfo]:
    """Every key and invitation, oldest first (revoked and expired ones too)."""
    return [KeyInfo.from_row(r) for r in store.execute("SELECT * FROM api_keys ORDER BY id")]


def find_key(store: Store, prefix: str) -> KeyInfo:
    """The one key whose prefix starts with `prefix` (a longer text, such as the whole key,
    matches on its first 12 characters). KeysError when none or several match."""
    prefix = prefix.strip()
    if not prefix:
        raise KeysError("give a key prefix, as `moss keys list` shows it")
    if len(prefix) >= PREFIX_LEN:
        rows = store.execute("SELECT * FROM api_keys WHERE prefix = ?", (prefix[:PREFIX_LEN],)).fetchall()
    else:
        rows = store.execute("SELECT * FROM api_keys WHERE substr(prefix, 1, ?) = ? ORDER BY id",
                             (len(prefix), prefix)).fetchall()
    if not rows:
        raise KeysError(f"no key starts with {prefix!r} (see `moss keys list`)")
    if len(rows) > 1:
        raise KeysError(f"{prefix!r} matches {len(rows)} keys ({', '.join(r['prefix'] for r in rows)}); "
                        "give more of the prefix")
    return KeyInfo.from_row(rows[0])


def revoke(store: Store, prefix: str) -> KeyInfo:
    """Revoke the key `prefix` names (see find_key); it is refused from then on. Revoking a
    revoked key changes nothing. Returns the row as it is now."""
    key = find_key(store, prefix)
    with store.transaction() as conn:
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                     (format_time(utcnow()), key.id))
        row = conn.execute("SELECT * FROM api_keys WHERE id = ?", (key.id,)).fetchone()
    return KeyInfo.from_row(row)


def any_keys(store: Store) -> bool:
    """Whether any key was ever made. Revoked and expired keys count, so revoking the last
    key locks the server rather than opening it."""
    return store.execute("SELECT EXISTS (SELECT 1 FROM api_keys)").fetchone()[0] == 1


def authenticate(store: Store, authorization_header: str | None, now: datetime | None = None) -> KeyInfo:
    """The key an `Authorization: Bearer KEY` header names, if it may be used now; else
    AuthError: 401 missing_api_key / invalid_authorization / invalid_api_key, 403
    key_revoked / key_expired. Records the use (last_used_at, at most every few seconds)."""
    if not authorization_header or not authorization_header.strip():
        raise AuthError(401, "missing_api_key", "this server needs an API key: send 'Authorization: Bearer KEY'")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, "invalid_authorization", "the Authorization header must be 'Bearer KEY'")
    return authenticate_token(store, token, now)


def authenticate_token(store: Store, token: str, now: datetime | None = None) -> KeyInfo:
    """The key `token` is, if it may be used now (see authenticate)."""
    digest = hash_key(token)
    match = None
    for row in store.execute("SELECT * FROM api_keys WHERE prefix = ?", (token[:PREFIX_LEN],)):
        if hmac.compare_digest(row["key_sha256"], digest):
            match = row
    if match is None:
        raise AuthError(401, "invalid_api_key", "the API key is not valid")
    key = KeyInfo.from_row(match)
    now = now or utcnow()
    state = key.state(now)
    if state == "revoked":
        raise AuthError(403, "key_revoked", f"the API key {key.prefix}... was revoked")
    if state == "expired":
        raise AuthError(403, "key_expired", f"the API key {key.prefix}... expired at {format_time(key.expires_at)}")
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= LAST_USED_EVERY_S:
        stamp = format_time(now)
        try:
            store.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (stamp, key.id))
            key = replace(key, last_used_at=parse_time(stamp))
        except sqlite3.OperationalError:  # busy past busy_timeout, read-only file: bookkeeping, not a refusal
            pass
    return key


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float):
        self.level, self.stamp = level, stamp


class RateLimiter:
    """Per-key token buckets in memory: requests per minute and tokens per minute. A bucket
    holds up to one minute's allowance, starts full and refills continuously. Thread-safe.
    `clock`: seconds, monotonic (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[int, str], _Bucket] = {}

    def _level(self, key_id: int, name: str, per_min: int, now: float) -> _Bucket:
        b = self._buckets.get((key_id, name))
        if b is None:
            b = self._buckets[(key_id, name)] = _Bucket(float(per_min), now)
        else:
            b.level = min(float(per_min), b.level + (now - b.stamp) * per_min / 60.0)
            b.stamp = now
        return b

    def check_request(self, key: KeyInfo) -> None:
        """Count one request against `key`, or raise RateLimited (counting nothing) when
        its requests/min are used up or its tokens/min bucket has less than one token."""
        with self._lock:
            now = self._clock()
            if key.tokens_per_min is not None:
                t = self._level(key.id, "tokens", key.tokens_per_min, now)
                if t.level < 1 - _EPS:
                    raise RateLimited((1 - t.level) * 60.0 / key.tokens_per_min, "tokens")
            if key.rate_per_min is not None:
                r = self._level(key.id, "requests", key.rate_per_min, now)
                if r.level < 1 - _EPS:
                    raise RateLimited((1 - r.level) * 60.0 / key.rate_per_min, "requests")
                r.level -= 1

    def charge_tokens(self, key: KeyInfo, n: int) -> None:
        """Take `n` tokens (prompt + completion, as the server counts them) from `key`'s
        tokens/min bucket after a reply; it may go negative, and then the key's next
        requests are refused until it refills."""
        if key.tokens_per_min is None or n <= 0:
            return
        with self._lock:
            self._level(key.id, "tokens", key.tokens_per_min, self._clock()).level -= n

    def forget(self, key: KeyInfo) -> None:
        """Drop `key`'s buckets (e.g. after revoking it)."""
        with self._lock:
            for name in ("requests", "tokens"):
                self._buckets.pop((key.id, name), None)
