"""Answers to many chat questions at once: one agent per worker thread, all on one engine, whose batches
run them together (the generation tasks' equivalent of batched log-likelihood)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import protocol
from ..agent import Agent, ModelGenerator
from ..engine import SamplingParams
from ..engine.generate import ContextTooLong
from ..model import LoadedModel


@dataclass
class Asked:
    question: str
    history: list[tuple[str, str]] | None = None


def trained_plugins(model_dir: str | Path | None) -> list[str] | None:
    meta = Path(model_dir) / "mosslm.json" if model_dir else None
    return json.loads(meta.read_text()).get("plugins") if meta and meta.is_file() else None


class Answerer:
    """Greedy replies through the same agent as `moss chat`, with the given plugins (or none)."""

    def __init__(self, loaded: LoadedModel, available: dict | None = None, max_new_tokens: int = 128,
                 workers: int = 16) -> None:
        self.loaded = loaded
        self.generator = ModelGenerator(loaded)
        self.available = available
        self.max_new_tokens = max_new_tokens
        self.workers = workers
        self._local = threading.local()
        self._lock = threading.Lock()
        self.too_long = 0  # questions whose prompt did not fit the model's context

    @property
    def speaks_moss(self) -> bool:
        tok = self.loaded.tokenizer
        return self.loaded.speaks_moss or not getattr(tok, "chat_template", None)

    def agent(self, plugins: list[str]) -> Agent:
        tok = self.loaded.tokenizer
        agent = Agent(self.generator, speaks_moss=self.speaks_moss, preset=self.loaded.protocol or "moss",
                      params=SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0),
                      template=lambda msgs, gen: tok.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=gen))
        if self.available is not None:
            agent.available = dict(self.available)
        if plugins and self.speaks_moss:
            agent.set_plugins(plugins)
        return agent

    def answer(self, asked: list[Asked], plugins: list[str] = (), bar=None) -> list[protocol.Turn]:
        plugins = list(plugins)

        def one(item: Asked) -> protocol.Turn:
            agents = getattr(self._local, "agents", None)
            if agents is None:
                agents = self._local.agents = {}
            key = tuple(plugins)
            if key not in agents:
                agents[key] = self.agent(plugins)
            agent = agents[key]
            agent.clear()
            for q, a in item.history or []:
                agent.history.turns.append(protocol.Turn(q, a, plugin=bool(plugins)))
            try:
                for _ in agent.send(item.question):
                    pass
                turn = agent.history.turns[-1]
            except ContextTooLong:  # scored as unanswered, and counted, rather than ending the run
                with self._lock:
                    self.too_long += 1
                turn = protocol.Turn(item.question, "")
            if bar is not None:
                bar.update(1)
            return turn

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, asked))

    def close(self) -> None:
        self.generator.engine.shutdown()
