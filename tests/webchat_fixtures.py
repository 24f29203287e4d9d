"""A real web chat server for tests and for `scripts/dev_webchat.py`.

`build_webchat_model(path)` trains a micro model (seconds) that answers these
prompts exactly, with the server's plugins Calculate and Lookup enabled (the
default settings):

- CALC_Q  "1234*5678等于多少?"     -> a Calculate("1234*5678") step, then CALC_REPLY
- CODE_Q  "Show me hello world in Python." -> CODE_REPLY (Markdown with a code block)
- XSS_Q   "Show me the payload."   -> XSS_REPLY: `<script>` and `<img onerror>` that set window.__pwned
- TOOL_XSS_Q "Look up the payload." -> a Lookup("payload") step whose result is TOOL_PAYLOAD, then "Done."
- STORY_Q "Tell me a story."       -> STORY_REPLY, whose second sentence holds the moderation test word

`start_webchat(...)` serves it on 127.0.0.1 with a fresh database and an
invitation code; `token_delay` (seconds per streamed piece, changeable later
through `.generator.delay`) slows the real model down so a test can watch a
reply grow or press Stop in time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import bilingual_corpus, memorize, serving

CALC_Q, CALC_REPLY = "1234*5678等于多少?", "1234*5678=7006652。这是计算器算出的结果，可以放心使用。"
CODE_Q = "Show me hello world in Python."
CODE_REPLY = 'Here it is:\n\n```python\nprint("hello world")\n```\n\nRun it with **python**.'
XSS_Q = "Show me the payload."
XSS_REPLY = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> payload'
TOOL_XSS_Q, TOOL_XSS_REPLY = "Look up the payload.", "Done."
TOOL_PAYLOAD = '<img src=x onerror="window.__pwned=3"><script>window.__pwned=4</script>'
STORY_Q = "Tell me a story."
STORY_REPLY = "Once there was a small model. It said MOSSLM-MODERATION-TEST out loud. The end."
PROMPTS = (CALC_Q, CODE_Q, XSS_Q, TOOL_XSS_Q, STORY_Q)


def lookup_plugin():
    from mosslm.plugins.registry import Plugin

    return Plugin("Lookup", lambda arg: TOOL_PAYLOAD, "Lookup", "query", "Look a word up.", 5.0)


def server_plugins() -> dict:
    from mosslm.plugins.registry import BUILTINS

    return {"Calculate": BUILTINS["Calculate"], "Lookup": lookup_plugin()}


def build_webchat_model(path: Path, tokenizer=None) -> Path:
    from conftest import meta_with

    from mosslm import protocol
    from mosslm.model import save_checkpoint
    from mosslm.tokenizer import train_tokenizer

    tokenizer = tokenizer or train_tokenizer(bilingual_corpus(), vocab_size=600, min_frequency=2)
    meta = meta_with(server_plugins())

    def plain(q: str, reply: str) -> protocol.Turn:
        return protocol.Turn(q, reply, plugin=True, thoughts="None", commands=None, results=None)

    turns = [
        protocol.Turn(CALC_Q, CALC_REPLY, plugin=True, thoughts="需要计算", commands='Calculate("1234*5678")',
                      results="Calculate(\"1234*5678\") => '7006652'\n"),
        plain(CODE_Q, CODE_REPLY), plain(XSS_Q, XSS_REPLY), plain(STORY_Q, STORY_REPLY),
        protocol.Turn(TOOL_XSS_Q, TOOL_XSS_REPLY, plugin=True, thoughts="Look it up.", commands='Lookup("payload")',
                      results=f'Lookup("payload") => {protocol.escape(TOOL_PAYLOAD)}\n'),
    ]
    model = memorize(tokenizer, [protocol.Conversation(meta, [t]).render() for t in turns], steps=600)
    save_checkpoint(model, tokenizer, path, preset="mosslm", metadata={"plugins": ["Calculate"]})
    return path


class SlowGenerator:
    """The real model's generator, pausing `delay` seconds before each streamed piece."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay
        self.engine, self.loaded, self.context_length = inner.engine, inner.loaded, inner.context_length

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def stream(self, prompt, params, result):
        for piece in self.inner.stream(prompt, params, result):
            if self.delay:
                time.sleep(self.delay)
            yield piece


@dataclass
class WebChat:
    url: str
    store: object
    invite: str
    server: object
    generator: SlowGenerator


def base_agent(generator, max_new_tokens: int = 120):
    from mosslm.agent import Agent
    from mosslm.engine import SamplingParams

    plugins = server_plugins()
    return Agent(generator, speaks_moss=True, preset="mosslm", plugins=dict(plugins), available=dict(plugins),
                 params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))


@contextmanager
def start_webchat(data_dir: Path, model_path: Path | None = None, generator=None, token_delay: float = 0.0,
                  auth: str = "keys", moderation: str = "off", logging: bool = True, config=None):
    """A served web chat. Give `model_path` (loaded here) or an existing ModelGenerator."""
    from mosslm.agent import ModelGenerator
    from mosslm.model import load
    from mosslm.serve.app import Server, ServerConfig, create_app
    from mosslm.serve.keys import create_key
    from mosslm.serve.moderation import Moderator
    from mosslm.serve.store import open_db

    own = generator is None
    inner = ModelGenerator(load(model_path)) if own else generator
    slow = SlowGenerator(inner, token_delay)
    store = open_db(data_dir)
    invite, _ = create_key(store, note="tester", invite=True, logging=logging)
    server = Server(base_agent(slow), "webchat-model", config or ServerConfig(), store=store,
                    open_access=auth == "none",
                    moderator=Moderator.from_config(moderation) if moderation != "off" else None)
    try:
        with serving(create_app(server)) as url:
            yield WebChat(url, store, invite, server, slow)
    finally:
        store.close()
        if own:
            inner.engine.shutdown()
