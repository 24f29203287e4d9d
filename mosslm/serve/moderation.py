"""Moderation for the web chat: user input, and streamed replies sentence by sentence.

As the MOSS production server did, a `Moderator` checks a user's message before
it reaches the model ("input"), and optionally the reply as it streams
("both"): an `OutputGate` cuts the stream into sentences (Chinese and English
punctuation, newlines) and checks each once, when it completes. Two checks,
either or both: a bilingual word list (`[category]` sections, the shipped
default in mosslm/resources/moderation_words.txt), and a classifier function
`fn(text, stage)` named as "package.module:function", "file.py:function" or an
entry point in the "mosslm.moderation" group.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import unicodedata
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

log = logging.getLogger("mosslm.serve")

MODES = ("off", "input", "both")
ENTRY_POINT_GROUP = "mosslm.moderation"
DEFAULT_WORDS = Path(__file__).resolve().parent.parent / "resources" / "moderation_words.txt"

_BLOCK_MESSAGES = {"zh": "抱歉，这个请求不符合使用规范，无法回答。",
                   "en": "Sorry, I can't help with that request: it goes against the usage policy."}


def block_message(lang: str) -> str:
    """What the user sees when moderation blocks: Chinese for "zh" (or "zh-*"), else English."""
    return _BLOCK_MESSAGES["zh" if re.match(r"zh(?:$|[-_])", (lang or "").lower()) else "en"]


class ModerationError(ValueError):
    """A bad moderation setting: mode, words file or classifier spec."""


@dataclass(frozen=True)
class Verdict:
    rule: str    # "words:<category>" or "classifier:<spec or the classifier's own rule>"
    text: str    # the input text, or the output sentence that tripped it
    stage: str   # "input" or "output"


# --- normalisation and the word regex -------------------------------------------------------

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e]")
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_GAP = re.compile(f"([{_CJK}])\\s+(?=[{_CJK}])")
_WORDCHAR = "0-9a-z_\u00c0-\u024f"       # what an English entry must not touch at either end
_IS_WORDCHAR = re.compile(f"[{_WORDCHAR}]")
_CATEGORY = re.compile(r"[\w.-]+")


def normalise(text: str) -> str:
    """The form words are matched on (only for matching; the text shown is never changed)."""
    text = _ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text)).lower()
    return _CJK_GAP.sub(r"\1", text)


def _entry_pattern(entry: str) -> str:
    norm = normalise(entry).strip()
    if not norm:
        raise ModerationError(f"empty moderation entry {entry!r}")
    first = norm[0]
    body = r"\s+".join(re.escape(part) for part in norm.split())   # re.escape works char by char
    # \b is no use here: to Python a CJK character is a word character, so "教我make a bomb" has no \b
    # before "make". Boundaries are Latin letters/digits only, and only where the entry has one at that end.
    # The start check comes after the first character, as a two-character lookbehind: a pattern whose
    # every alternative opens with a literal lets re skip ahead by first character, which keeps a
    # 10k-character check well under a millisecond (a leading lookaround would cost ~10 ms).
    if _IS_WORDCHAR.match(first):
        body = f"{re.escape(first)}(?<![{_WORDCHAR}].){body[len(re.escape(first)):]}"
    if _IS_WORDCHAR.match(norm[-1]):
        body = f"{body}(?![{_WORDCHAR}])"
    return body


def _compile(words: dict[str, list[str]]) -> tuple[re.Pattern | None, list[tuple[str, re.Pattern]]]:
    """One flat regex over all entries to find a hit fast, and one per category to name it."""
    by_category: list[tuple[str, re.Pattern]] = []
    everything: list[str] = []
    for category, entries in words.items():
        if not _CATEGORY.fullmatch(category or ""):
            raise ModerationError(f"bad moderation category name {category!r}: use letters, digits, _ . -")
        bodies = sorted({_entry_pattern(e) for e in entries}, key=len, reverse=True)
        if bodies:
            by_category.append((category, re.compile("|".join(bodies))))
            everything += bodies
    return (re.compile("|".join(everything)) if everything else None), by_category


def load_words(path: str | Path) -> dict[str, list[str]]:
    """A words file: `[category]` lines, one entry per line below them, `#` comment lines."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModerationError(f"{p}: cannot read the moderation words file: {e}") from e
    words: dict[str, list[str]] = {}
    category = None
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") or line.endswith("]"):
            name = line[1:-1].strip() if line.startswith("[") and line.endswith("]") else ""
            if not _CATEGORY.fullmatch(name):
                raise ModerationError(f"{p}:{n}: malformed section line {raw!r}: expected [category] "
                                      "(letters, digits, _ . -)")
            category = name
            words.setdefault(category, [])
        elif category is None:
            raise ModerationError(f"{p}:{n}: entry {raw!r} comes before any [category] line")
        elif not normalise(line).strip():
            raise ModerationError(f"{p}:{n}: entry {raw!r} is empty once normalised")
        else:
            words[category].append(line)
    return words


# --- classifiers -----------------------------------------------------------------------------

def load_classifier(spec: str) -> Callable[[str, str], object]:
    """"package.module:function", "path/to/file.py:function" or an entry point name (mosslm.moderation)."""
    spec = (spec or "").strip()
    usage = ("expected 'package.module:function', 'path/to/file.py:function' or the name of an "
             f"entry point in the {ENTRY_POINT_GROUP!r} group")
    if not spec:
        raise ModerationError(f"empty moderation classifier spec: {usage}")
    if ":" in spec:
        target, _, name = spec.rpartition(":")
        if not target or not all(part.isidentifier() for part in name.split(".")):
            raise ModerationError(f"bad moderation classifier spec {spec!r}: {usage}")
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target)
            if not path.is_file():
                raise ModerationError(f"moderation classifier file not found: {path}")
            mod_spec = importlib.util.spec_from_file_location(f"mosslm_user_moderation_{path.stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise ModerationError(f"moderation classifier file is not a Python file: {path}")
            module = importlib.util.module_from_spec(mod_spec)
            try:
                mod_spec.loader.exec_module(module)
            except Exception as e:
                raise ModerationError(f"{path}: the moderation classifier file failed to load: {e}") from e
        else:
            try:
                module = importlib.import_module(target)
            except Exception as e:
                raise ModerationError(f"cannot import moderation classifier module {target!r}: {e}") from e
        fn: object = module
        for part in name.split("."):
            fn = getattr(fn, part, None)
        if fn is None:
            raise ModerationError(f"moderation classifier {spec!r}: {target} has no {name!r}")
    else:
        found = list(entry_points(group=ENTRY_POINT_GROUP, name=spec))
        if not found:
            names = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ModerationError(f"no moderation classifier {spec!r} ({usage}; installed entry points: "
                                  f"{', '.join(names) or 'none'})")
        try:
            fn = found[0].load()
        except Exception as e:
            raise ModerationError(f"moderation classifier entry point {spec!r} failed to load: {e}") from e
    if not callable(fn):
        raise ModerationError(f"moderation classifier {spec!r} is not callable")
    return fn


# --- the moderator ---------------------------------------------------------------------------

def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ModerationError(f"bad moderation mode {mode!r}: choose one of {', '.join(MODES)}")
    return mode


class Moderator:
    """The server's one moderation object: mode "off" checks nothing, "input" the user's messages,
    "both" those and the streamed replies (through output_gate()). Thread-safe; gates are not."""

    def __init__(self, mode: str = "off", words: dict[str, list[str]] | None = None,
                 classifier: Callable[[str, str], object] | None = None, classifier_name: str | None = None):
        self.mode = _check_mode(mode)
        self._regex, self._categories = _compile(words or {})
        self.classifier = classifier
        self.classifier_name = classifier_name or (
            f"{getattr(classifier, '__module__', '?')}:{getattr(classifier, '__qualname__', '?')}"
            if classifier is not None else "")

    @classmethod
    def from_config(cls, mode: str = "off", words_file: str | Path | None = None,
                    classifier: str | None = None) -> "Moderator":
        _check_mode(mode)
        words = load_words(DEFAULT_WORDS if words_file is None else words_file)
        fn = load_classifier(classifier) if classifier else None
        return cls(mode, words, fn, classifier.strip() if classifier else None)

    def check(self, text: str, stage: str) -> Verdict | None:
        """Words, then the classifier, whatever the mode (the mode decides when this is called)."""
        if not text or not text.strip():
            return None
        verdict = self.check_words(text, stage)
        if verdict is not None:
            return verdict
        if self.classifier is not None:
            try:
                result = self.classifier(text, stage)
            except Exception as e:
                # Fail open: a classifier that raises (a bug, a model server that is down) lets the
                # text through, with a warning. Failing closed would turn one broken classifier into
                # every chat being refused, i.e. take the whole service down.
                log.warning("moderation classifier %s raised on %s text; allowing it (fail open): %r",
                            self.classifier_name, stage, e)
                return None
            if result:
                rule = result if isinstance(result, str) else self.classifier_name
                return Verdict(f"classifier:{rule}", text, stage)
        return None

    def check_words(self, text: str, stage: str) -> Verdict | None:
        """The word lists only: cheap enough to run on every streamed delta."""
        if self._regex is None or not text:
            return None
        norm = normalise(text)
        m = self._regex.search(norm)
        if not m:
            return None
        category = next((c for c, r in self._categories if r.match(norm, m.start())), "?")
        return Verdict(f"words:{category}", text, stage)

    def check_input(self, text: str) -> Verdict | None:
        return None if self.mode == "off" else self.check(text, "input")

    def output_gate(self) -> "OutputGate":
        return OutputGate(self if self.mode == "both" else None)


# A sentence ends after Chinese 。！？；… (at once), after English . ! ? ; once whitespace follows
# (so "3.14" and a "." still at the end of the stream are not boundaries yet), or after a newline.
# Closing quotes and brackets right after the punctuation stay with their sentence.
_CLOSERS = "\"'”’」』）)］]》"
_BOUNDARY = re.compile(f"[。！？；…]+[{re.escape(_CLOSERS)}]*|[.!?;]+[{re.escape(_CLOSERS)}]*(?=\\s)|\\n")
_PENDING = set("。！？；….!?;" + _CLOSERS)


class OutputGate:
    """One streamed reply: feed() the deltas, finish() at the end; stop streaming once blocked."""

    def __init__(self, moderator: Moderator | None):
        self._moderator = moderator   # None: never blocks (mode != "both"), only tracks the text
        self._done: list[str] = []    # complete sentences, checked
        self._tail = ""               # text after them, not checked yet
        self._safe: str | None = None
        self.blocked: Verdict | None = None

    @property
    def safe_text(self) -> str:
        if self._safe is None:
            self._done[:] = ["".join(self._done)]
            return self._done[0] + self._tail
        return self._safe

    def _check(self, sentence: str) -> Verdict | None:
        verdict = self._moderator.check(sentence, "output")
        if verdict is not None:
            self.blocked = Verdict(verdict.rule, sentence.strip(), "output")
            self._safe = "".join(self._done)
        self._done.append(sentence)
        return self.blocked

    def feed(self, delta: str) -> Verdict | None:
        if self.blocked is not None:
            return self.blocked
        old = len(self._tail)
        self._tail += delta
        if self._moderator is None:
            return None
        # Rescan only what may have changed: back over trailing punctuation that was waiting for more text.
        start = old
        while start > 0 and self._tail[start - 1] in _PENDING:
            start -= 1
        cut = 0
        for m in _BOUNDARY.finditer(self._tail, start):
            sentence, cut = self._tail[cut:m.end()], m.end()
            if self._check(sentence):
                break
        self._tail = self._tail[cut:]
        if self.blocked is None and self._tail:
            # The unfinished sentence is checked against the word lists too, so a listed phrase is
            # caught in the delta that completes it, before that delta is shown to anyone. (The
            # classifier, which may be slow, sees whole sentences only.)
            verdict = self._moderator.check_words(self._tail, "output")
            if verdict is not None:
                self.blocked = Verdict(verdict.rule, self._tail.strip(), "output")
                self._safe = "".join(self._done)
        return self.blocked

    def finish(self) -> Verdict | None:
        if self.blocked is None and self._moderator is not None and self._tail:
            tail, self._tail = self._tail, ""
            self._check(tail)
        return self.blocked
