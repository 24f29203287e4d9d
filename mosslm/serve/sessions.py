"""Browser sessions: an invitation code (or API key) traded for a cookie.

The cookie holds 32 random bytes; the database keeps only their SHA-256, the key
they belong to and when they expire, so sessions survive a restart and a leaked
database opens no session. A session ends at logout, at expiry, or when its key is
revoked or expires.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from .keys import AuthError, KeyInfo, authenticate_token, format_time, hash_key, parse_time, utcnow
from .store import Store

COOKIE = "moss_session"
TOUCH_EVERY_S = 60.0  # last_seen_at is written at most this often per session


def login(store: Store, code: str, days: float, now: datetime | None = None) -> tuple[str, KeyInfo, datetime]:
    """Check `code` and open a session: (cookie token, key, expiry). AuthError when the
    code is unknown (401 invalid_code), revoked or expired (403 code_revoked / code_expired)."""
    code = (code or "").strip()
    if not code:
        raise AuthError(401, "invalid_code", "enter an invitation code")
    try:
        key = authenticate_token(store, code, now)
    except AuthError as e:
        raise AuthError(e.status, {"invalid_api_key": "invalid_code", "key_revoked": "code_revoked",
                                   "key_expired": "code_expired"}.get(e.code, e.code),
                        {"invalid_api_key": "this invitation code is not valid"}.get(e.code, e.message)) from None
    now = now or utcnow()
    expires = now + timedelta(days=days)
    if key.expires_at is not None:
        expires = min(expires, key.expires_at)
    token = secrets.token_urlsafe(32)
    with store.transaction() as conn:
        conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (format_time(now),))  # tidy as we go
        conn.execute("INSERT INTO sessions (token_sha256, key_id, created_at, expires_at, last_seen_at) "
                     "VALUES (?, ?, ?, ?, ?)", (hash_key(token), key.id, format_time(now), format_time(expires),
                                                 format_time(now)))
    return token, key, expires


def session_key(store: Store, token: str | None, now: datetime | None = None) -> KeyInfo:
    """The key of the session `token` opens; AuthError 401 login_required / session_expired,
    403 when its key was revoked or expired since."""
    if not token:
        raise AuthError(401, "login_required", "log in with your invitation code")
    now = now or utcnow()
    row = store.execute(
        "SELECT s.id AS session_id, s.expires_at AS session_expires, s.last_seen_at AS seen, k.* "
        "FROM sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.token_sha256 = ?", (hash_key(token),)).fetchone()
    if row is None:
        raise AuthError(401, "login_required", "log in with your invitation code")
    if parse_time(row["session_expires"]) <= now:
        store.execute("DELETE FROM sessions WHERE id = ?", (row["session_id"],))
        raise AuthError(401, "session_expired", "your session has expired; log in again")
    key = KeyInfo.from_row(row)
    state = key.state(now)
    if state != "active":
        raise AuthError(403, "code_revoked" if state == "revoked" else "code_expired",
                        f"your invitation code was {'revoked' if state == 'revoked' else 'expired'}")
    seen = parse_time(row["seen"])
    if seen is None or (now - seen).total_seconds() >= TOUCH_EVERY_S:
        try:
            store.execute("UPDATE sessions SET last_seen_at = ? WHERE id = ?", (format_time(now), row["session_id"]))
        except Exception:  # bookkeeping only
            pass
    return key


def logout(store: Store, token: str | None) -> None:
    if token:
        store.execute("DELETE FROM sessions WHERE token_sha256 = ?", (hash_key(token),))
