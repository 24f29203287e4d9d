"""Preference (DPO) records: reading and validating them.

A record is one JSON object (one per line in a `.jsonl` file):

    {"prompt":   [OpenAI messages, ending with a user message],
     "chosen":   [one assistant message],
     "rejected": [one assistant message],
     "source":   {...}}                      (optional, any other keys are kept)

Messages are in the project's OpenAI format (see docs/protocol.md): a plugin
turn's final assistant message carries the `moss` extension field. The rules
make a record usable for preference training and no looser than SFT data:
`prompt + chosen` and `prompt + rejected` must each parse as a valid
conversation (the same reader and terminator rules as `moss data check` uses
for OpenAI records), so what trains as a pair also trains as SFT text; and
the two answers must differ, or the pair teaches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..protocol import Conversation, ProtocolError, Turn

KEYS = ("prompt", "chosen", "rejected")


_CONVERSATION_KEYS = ("chat", "meta_instruction", "conversations", "messages")


def is_preference(record: Any) -> bool:
    """Whether a record is meant as a preference record: it has one of the keys
    prompt/chosen/rejected and none of a conversation's, so a record missing
    one of the three is reported as a bad dpo record, not an unknown one."""
    return (isinstance(record, dict) and any(k in record for k in KEYS)
            and not any(k in record for k in _CONVERSATION_KEYS))


@dataclass
class Preference:
    """One preference pair: the prompt (its last turn pending) and the two answers to it."""

    prompt: Conversation
    chosen: Turn
    rejected: Turn
    source: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def conversation(self, which: str = "chosen") -> Conversation:
        """The prompt completed with the chosen (or rejected) answer, as SFT conversation."""
        answer = self.chosen if which == "chosen" else self.rejected
        return Conversation(self.prompt.meta, self.prompt.turns[:-1] + [answer], self.prompt.id, dict(self.extra))


def _answer(record: dict, key: str, prompt: list, warnings: list[str] | None) -> Turn:
    """The last turn of `prompt + record[key]`, which must be one final assistant message."""
    answer = record[key]
    if not isinstance(answer, list) or len(answer) != 1:
        raise ProtocolError(f"'{key}' must be a list of exactly one assistant message")
    msg = answer[0]
    if not isinstance(msg, dict) or msg.get("role") != "assistant":
        raise ProtocolError(f"'{key}' must be one assistant message (role 'assistant')")
    if msg.get("tool_calls"):
        raise ProtocolError(f"'{key}' must be a final assistant message, not a tool call "
                            "(a plugin turn's fields go in its 'moss' field)")
    try:
        _, conv = protocol.parse_record({"messages": prompt + [msg]}, warnings=warnings)
    except ProtocolError as e:
        raise ProtocolError(f"prompt + {key}: {e}") from None
    return conv.turns[-1]


def read_preference(record: Any, warnings: list[str] | None = None) -> Preference:
    """Parse and validate one preference record; any problem raises ProtocolError with the reason.

    Stray terminators of other fields (kept verbatim, as in SFT data) are
    appended to `warnings` when a list is given.
    """
    if not isinstance(record, dict):
        raise ProtocolError("a dpo record must be a JSON object")
    missing = [k for k in KEYS if k not in record]
    if missing:
        raise ProtocolError(f"a dpo record needs 'prompt', 'chosen' and 'rejected'; missing: {', '.join(missing)}")
    prompt = record["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise ProtocolError("'prompt' must be a non-empty list of messages")
    last = prompt[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        role = last.get("role") if isinstance(last, dict) else None
        raise ProtocolError(f"'prompt' must end with a user message, not {role!r}")
    try:
        conv = protocol.from_openai({"messages": prompt})
    except ProtocolError as e:
        raise ProtocolError(f"prompt: {e}") from None
    found: list[str] = []
    chosen = _answer(record, "chosen", prompt, found)
    rejected = _answer(record, "rejected", prompt, found)
    if warnings is not None:  # the prompt's warnings come twice: keep each once
        warnings += list(dict.fromkeys(found))
    if chosen == rejected:
        raise ProtocolError("'chosen' and 'rejected' are the same answer")
    extra = {k: v for k, v in record.items() if k not in KEYS + ("source",)}
    return Preference(conv, chosen, rejected, record.get("source"), extra)
