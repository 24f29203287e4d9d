"""Constrained decoding for JSON replies (OpenAI `response_format` json_object / json_schema).

The grammar work is done by xgrammar (`pip install xgrammar`, or the
`mosslm[constrained]` extra), which handles byte-level BPE tokenizers such as
ours. `JsonConstraint.compile(tokenizer, schema)` builds the token-level
grammar once per (tokenizer, schema) and caches it; put the compiled object in
`SamplingParams.constraint` and the engine makes a `JsonState` per request with
`new_state()`. Each step the engine asks the state for `allowed_mask(vocab)`,
sets every other logit to -inf before sampling, then calls `advance(token)`;
when `done` is true the JSON is complete and the request ends with
finish_reason "stop". End-of-text and stop tokens are never sampled under a
constraint: the grammar decides the end.

Whitespace between JSON tokens is off by default (`any_whitespace=False`):
compact JSON cannot loop on spaces and newlines, which a weak model otherwise
does until it runs out of tokens.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import OrderedDict

import torch

PIP_PACKAGE = "xgrammar"
CACHE_SIZE = 64  # compiled schemas kept per tokenizer

# xgrammar's bitmask: token i is bit i % 32 of int32 word i // 32, i.e. bit i % 8 of byte i // 8 on a
# little-endian machine, where unpacking bytes is ~4x faster than unpacking words.
_LITTLE = sys.byteorder == "little"
_BITS = torch.arange(8, dtype=torch.uint8) if _LITTLE else torch.arange(32, dtype=torch.int32)


def _xgrammar():
    try:
        import xgrammar
    except ImportError as e:
        raise ImportError(f"constrained JSON decoding needs the '{PIP_PACKAGE}' package: "
                          f"pip install {PIP_PACKAGE}  (or pip install 'mosslm[constrained]')") from e
    return xgrammar


class _TokenizerGrammars:
    """xgrammar's view of one tokenizer, and the schemas compiled for it."""

    def __init__(self, tokenizer) -> None:
        xgr = _xgrammar()
        self.tokenizer = tokenizer  # held so that id(tokenizer) stays this tokenizer's
        eos = getattr(tokenizer, "eos_token_id", None)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer),
                                                       stop_token_ids=[eos] if eos is not None else None)
        if not self.info.stop_token_ids:
            raise ValueError("the tokenizer has no end-of-text token, which constrained decoding needs to end")
        self.compiler = xgr.GrammarCompiler(self.info)
        self.compiled: OrderedDict[str, JsonConstraint] = OrderedDict()
        # Tokens with a control byte (< 0x20) are never valid JSON text, bar \t \n \r as whitespace between
        # values. xgrammar 0.2.9 lets them into strings that have a maxLength, so they are masked here too.
        control = [i for i, b in enumerate(self.info.decoded_vocab) if any(c < 0x20 for c in b)]
        spacing = [i for i in control if not set(self.info.decoded_vocab[i]) - set(b"\t\n\r ")]
        self.banned = {False: torch.tensor(control, dtype=torch.long),
                       True: torch.tensor(sorted(set(control) - set(spacing)), dtype=torch.long)}


_lock = threading.Lock()
_by_tokenizer: dict[int, _TokenizerGrammars] = {}


class JsonConstraint:
    """A JSON grammar compiled for one tokenizer: any JSON object, or one schema."""

    def __init__(self, compiled, grammars: _TokenizerGrammars, schema: dict | None) -> None:
        self._compiled, self.schema = compiled, schema
        self.vocab_size = grammars.info.vocab_size
        self.stop_token_ids = list(grammars.info.stop_token_ids)
        self.banned = torch.empty(0, dtype=torch.long)  # tokens masked whatever the grammar says

    @classmethod
    def compile(cls, tokenizer, schema: dict | None = None, any_whitespace: bool = False) -> JsonConstraint:
        """The grammar of a JSON object (schema None) or of JSON valid under `schema`.

        Raises ValueError for a schema that is not a JSON object or that xgrammar cannot compile,
        ImportError naming the pip package when xgrammar is not installed."""
        if schema is not None and not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
        try:
            key = json.dumps([schema, any_whitespace], sort_keys=True, ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the JSON schema is not serializable as JSON: {e}") from None
        with _lock:
            grammars = _by_tokenizer.get(id(tokenizer))
            if grammars is None or grammars.tokenizer is not tokenizer:
                grammars = _by_tokenizer[id(tokenizer)] = _TokenizerGrammars(tokenizer)
            hit = grammars.compiled.get(key)
            if hit is not None:
                grammars.compiled.move_to_end(key)
                return hit
        source = json.dumps(schema if schema is not None else {"type": "object"})
        try:
            compiled = grammars.compiler.compile_json_schema(source, any_whitespace=any_whitespace)
        except Exception as e:  # xgrammar reports a bad schema as RuntimeError with its parser's message
            message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            message = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", message)  # "[time] file.cc:123: " prefix
            raise ValueError(f"invalid JSON schema: {message}") from None
        made = cls(compiled, grammars, schema)
        made.banned = grammars.banned[any_whitespace]
        with _lock:
            grammars.compiled[key] = made
            while len(grammars.compiled) > CACHE_SIZE:
                grammars.compiled.popitem(last=False)
        return made

    def new_state(self) -> JsonState:
        return JsonState(self)


class JsonState:
    """One request's position in the grammar."""

    def __init__(self, constraint: JsonConstraint) -> None:
        xgr = _xgrammar()
        self._c = constraint
        self._matcher = xgr.GrammarMatcher(constraint._compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, constraint.vocab_size)
        self.done = False
        self._fill()

    def _fill(self) -> None:
        self._matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask[0].view(torch.uint8) if _LITTLE else self._bitmask[0]
        self._allowed = ((words.unsqueeze(1) >> _BITS) & 1).bool().flatten()[: self._c.vocab_size]
        stops = self._allowed[self._c.stop_token_ids]
        self.done = bool(stops.any())  # the grammar may end here: the JSON is complete
        self._allowed[self._c.stop_token_ids] = False
        self._allowed[self._c.banned] = False

    def allowed_mask(self, vocab_size: int) -> torch.Tensor:
        """Bool [vocab_size]: the tokens the grammar accepts next (ids past the tokenizer's are never allowed)."""
        n = min(vocab_size, self._c.vocab_size)
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[:n] = self._allowed[:n]
        return mask

    def mask_logits(self, logits: torch.Tensor, banned=()) -> torch.Tensor:
        """logits [V] with every token the grammar rejects, and the `banned` ids, set to -inf."""
        allowed = self.allowed_mask(logits.numel())
        allowed[[t for t in banned if 0 <= t < logits.numel()]] = False
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, token_id: int) -> None:
        if not self._matcher.accept_token(token_id):
            raise ValueError(f"token {token_id} does not continue the JSON grammar")
        self._fill()
