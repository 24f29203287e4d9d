"""`moss keys create|list|revoke`: manage the API keys `moss serve` accepts."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Callable

from .keys import KeyInfo, KeysError, format_time, parse_expires, parse_rate, utcnow
from .store import Store, StoreError, open_db


def _arg(parse):
    """An argparse type from a parser that raises KeysError (argparse then exits 2)."""
    def convert(text: str):
        try:
            return parse(text)
        except KeysError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


def _with_store(args: argparse.Namespace, action: str, work: Callable[[Store], int]) -> int:
    """Open the database, run `work` on it; its KeysError is bad input (exit 2), a database
    that cannot be opened exits 1."""
    try:
        store = open_db(args.data_dir)
    except StoreError as e:
        print(f"moss keys: {e}", file=sys.stderr)
        return 1
    with store:
        try:
            return work(store)
        except KeysError as e:
            print(f"moss keys {action}: {e}", file=sys.stderr)
            return 2


def _limit(n: int | None, unit: str) -> str:
    return f"{n} {unit}/min" if n is not None else "unlimited"


def _when(t: datetime | None, never: str = "-") -> str:
    return format_time(t) if t else never


def cmd_keys_create(args: argparse.Namespace) -> int:
    return _with_store(args, "create", lambda store: _create(store, args))


def _create(store: Store, args: argparse.Namespace) -> int:
    from .keys import create_key

    key, info = create_key(store, note=args.note, rate_per_min=args.rate, tokens_per_min=args.tokens,
                           expires=args.expires, invite=args.invite,
                           logging=not args.no_logging)
    print(f"created {'invitation code' if info.invite else 'API key'} {info.prefix} in {store.path}")
    print(f"  note:     {info.note or '-'}")
    print(f"  requests: {_limit(info.rate_per_min, 'requests')}")
    print(f"  tokens:   {_limit(info.tokens_per_min, 'tokens')}")
    print(f"  expires:  {_when(info.expires_at, 'never')}")
    print(f"  logging:  {'on' if info.logging else 'off (nothing of its conversations is stored)'}")
    sys.stdout.flush()
    print("the key (shown only now; only its hash is stored):", file=sys.stderr, flush=True)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .keys import list_keys

    keys: list[KeyInfo] = []
    rc = _with_store(args, "list", lambda store: keys.extend(list_keys(store)) or 0)
    if rc:
        return rc
    now = utcnow()
    if args.json:
        print(json.dumps([k.to_dict(now) for k in keys], indent=1, ensure_ascii=False))
        return 0
    if not keys:
        print("no API keys yet; `moss keys create` makes one")
        return 0
    rows = [_row(k, now) for k in keys]
    head = ("PREFIX", "STATE", "KIND", "REQUESTS", "TOKENS", "EXPIRES", "CREATED", "LAST USED", "NOTE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _row(k: KeyInfo, now: datetime) -> tuple[str, ...]:
    state = k.state(now)
    if state == "revoked":
        state = f"revoked {format_time(k.revoked_at)}"
    return (k.prefix, state, "invite" if k.invite else "key", _limit(k.rate_per_min, "req"),
            _limit(k.tokens_per_min, "tok"), _when(k.expires_at, "never"), _when(k.created_at),
            _when(k.last_used_at, "never"), k.note or "")


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    return _with_store(args, "revoke", lambda store: _revoke(store, args.prefix))


def _revoke(store: Store, prefix: str) -> int:
    from .keys import find_key, revoke

    before = find_key(store, prefix)
    info = revoke(store, prefix)
    note = f" ({info.note})" if info.note else ""
    if before.revoked_at is not None:
        print(f"{info.prefix}{note} was already revoked at {format_time(info.revoked_at)}")
    else:
        print(f"revoked {info.prefix}{note}; it is refused from now on")
    return 0


def add_keys_parser(verbs) -> argparse.ArgumentParser:
    """Add `moss keys ...` to the `moss` subparsers `verbs`."""
    keys = verbs.add_parser("keys", help="API keys and invitation codes for moss serve",
                            description="Create, list and revoke the keys `moss serve` accepts (Authorization: "
                                        "Bearer KEY), each with optional per-minute limits. Only a hash of each "
                                        "key is stored, in DATA_DIR/mosslm.db (default $MOSSLM_HOME/serve).")
    sub = keys.add_subparsers(dest="keys_verb", metavar="ACTION")
    create = sub.add_parser("create", help="make a key; it is printed once, alone on the last line",
                            description="Make a key. Details go first; the key itself is the last line of "
                                        "stdout, so KEY=$(moss keys create | tail -1) works.")
    create.add_argument("--note", help="what the key is for (shown in the list)")
    create.add_argument("--rate", type=_arg(parse_rate), metavar="N[/min]", help="requests per minute (default: unlimited)")
    create.add_argument("--tokens", type=_arg(parse_rate), metavar="N[/min]",
                        help="tokens per minute, prompt and reply (default: unlimited)")
    create.add_argument("--expires", type=_arg(parse_expires), metavar="DATE",
                        help="YYYY-MM-DD (works through that day, UTC) or an ISO datetime (UTC unless it says); "
                             "default: never")
    create.add_argument("--invite", action="store_true", help="make an invitation code (moss-inv-...) instead")
    create.add_argument("--no-logging", action="store_true",
                        help="its holder declines logging: the web chat keeps their conversations only in their "
                             "browser, never in the database (nor their feedback)")
    create.set_defaults(func=cmd_keys_create)
    lst = sub.add_parser("list", help="show the keys (prefix, limits, state), never the keys themselves")
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    lst.set_defaults(func=cmd_keys_list)
    rev = sub.add_parser("revoke", help="refuse a key from now on")
    rev.add_argument("prefix", metavar="PREFIX", help="the key's prefix as `moss keys list` shows it (or its start)")
    rev.set_defaults(func=cmd_keys_revoke)
    for p in (create, lst, rev):
        p.add_argument("--data-dir", metavar="DIR", help="the server's data folder (default: $MOSSLM_HOME/serve)")
    keys.set_defaults(func=lambda a: (keys.print_help(), 2)[1])
    return keys
