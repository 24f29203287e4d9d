"""Mask personal data (PII) in text with typed placeholders.

One implementation for every pipeline that must not keep personal data: the
web chat's data flywheel export (`moss data export`) and, later, the cleaning
of web text. `mask_pii(text)` returns the masked text and how many of each
kind it replaced, so a pipeline can report what it removed.

Kinds and placeholders:

- `EMAIL` -> `<EMAIL>`: e-mail addresses.
- `PHONE` -> `<PHONE>`: Chinese mobile numbers (1[3-9]x, 11 digits, spaces or
  dashes as 3-4-4, optional +86 / 0086 prefix) and international numbers
  (`+CC` and 7-14 more digits, with spaces, dots, dashes or parentheses).
- `ID_CARD` -> `<ID_CARD>`: Chinese 18-digit resident ID numbers whose ISO
  7064 MOD 11-2 check character is right (it may be X). A number with a wrong
  check character is not an ID number and is left alone.
- `IP` -> `<IP>`: IPv4 (each octet 0-255) and IPv6 (full or `::`-compressed,
  validated by `ipaddress`).

Why no `\\b`: in Python `\\b` and `\\w` are Unicode-aware, so a number written
straight after a Chinese character ("电话13812345678") has no word boundary
before it. Every pattern here uses explicit ASCII look-arounds instead, so
the Chinese text around PII stays intact and still delimits it. Digits are
ASCII `[0-9]` (full-width digits are not recognised).

Left alone: ordinary numbers, dates (2026-12-01), prices, arithmetic
(1234*5678) and version strings with a prefix ("v1.2.3.4"). Known, accepted
false positive: a bare four-part version string that is a valid IPv4
address ("1.2.3.4") is masked as `<IP>`.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache

EMAIL, PHONE, ID_CARD, IP = "EMAIL", "PHONE", "ID_CARD", "IP"
ALL: tuple[str, ...] = (EMAIL, ID_CARD, PHONE, IP)  # also the order of masking, see `mask_pii`
PLACEHOLDERS: dict[str, str] = {kind: f"<{kind}>" for kind in ALL}

_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]*[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])")

# 6-digit region, birth date 19xx/20xx MMDD, 3-digit sequence, check character.
_ID_RE = re.compile(
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
    r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

# Chinese mobile: optional +86 / 0086, then 1[3-9]x xxxx xxxx with optional space/dash groups.
_CN_MOBILE_RE = re.compile(
    r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])")
# International: `+`, then digit runs joined by one separator each (a space, dot or dash, or a
# parenthesised area code); each run is maximal, so matching stays linear. The digit count is checked after.
_PHONE_SEP = r"(?:[ .-]?\(|\)[ .-]?|[ .-])"
_INTL_PHONE_RE = re.compile(rf"(?<![0-9A-Za-z+])\+[1-9][0-9]*(?:{_PHONE_SEP}[0-9]+)*(?![0-9])")

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV4_RE = re.compile(rf"(?<![0-9A-Za-z])(?<![0-9]\.){_IPV4}(?![0-9])(?!\.[0-9])")
# A candidate of hex groups and colons (perhaps ending in an IPv4 part); `ipaddress` decides.
_IPV6_RE = re.compile(
    rf"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_IPV4}|[0-9A-Fa-f]{{0,4}})(?![0-9A-Za-z:])(?!\.[0-9])")


def id_card_valid(number: str) -> bool:
    """Whether an 18-character Chinese resident ID number has the right ISO 7064 MOD 11-2 check character."""
    if len(number) != 18 or not number[:17].isdigit() or not number[:17].isascii():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def _intl_phone(m: re.Match) -> bool:
    digits = sum(ch.isdigit() for ch in m.group(0))
    return 8 <= digits <= 17  # a 1-3 digit country code and 7-14 more


def _ipv6(m: re.Match) -> bool:
    text = m.group(0)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    # "::" and "::1"-like fragments are too short to be anybody's address (and common in code).
    groups = [g for g in re.split(r":+", text) if g]
    return "::" not in text or len(groups) >= 2


_Rule = tuple[str, re.Pattern, Callable[[re.Match], bool] | None]
_RULES: tuple[_Rule, ...] = (
    (EMAIL, _EMAIL_RE, None),
    (ID_CARD, _ID_RE, lambda m: id_card_valid(m.group(0))),  # before phones: an ID holds mobile-like digits
    (PHONE, _CN_MOBILE_RE, None),
    (PHONE, _INTL_PHONE_RE, _intl_phone),
    (IP, _IPV6_RE, _ipv6),  # before IPv4, so an IPv4-mapped IPv6 address is masked whole
    (IP, _IPV4_RE, None),
)


def mask_pii(text: str, kinds: Iterable[str] = ALL) -> tuple[str, Counter]:
    """`text` with each PII item of `kinds` replaced by its placeholder, and the count per kind.

    Kinds are masked in a fixed order (e-mail, ID number, phone, IP), each on
    the text the previous ones left, so one item is never counted twice (a
    placeholder holds no digit or `@`).
    """
    wanted = set(kinds)
    unknown = wanted - set(ALL)
    if unknown:
        raise ValueError(f"unknown PII kind(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL)}")
    counts: Counter = Counter()
    for kind, pattern, accept in _RULES:
        if kind not in wanted:
            continue

        def replace(m: re.Match, kind: str = kind, accept=accept) -> str:
            if accept is not None and not accept(m):
                return m.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, counts


class Masker:
    """`mask_pii` for a stream of texts: caches repeated texts (a conversation's early
    messages recur in every record of its branches) and keeps counts until `take()`,
    so a pipeline can count only the masks of what it really writes."""

    def __init__(self, kinds: Iterable[str] = ALL, cache_size: int = 8192):
        kinds = tuple(kinds)
        mask_pii("", kinds)  # reject unknown kinds now
        self.counts: Counter = Counter()
        self._mask = lru_cache(maxsize=cache_size)(lambda text: mask_pii(text, kinds))

    def __call__(self, text: str) -> str:
        masked, found = self._mask(text)
        self.counts.update(found)
        return masked

    def take(self) -> Counter:
        """The counts since the last `take()`, and start again from zero."""
        counts, self.counts = self.counts, Counter()
        return counts
