"""Plugins the agent can run, and how they are found.

A plugin is a command name with its MOSS capability line and API, a
description and JSON schema (the OpenAI `tools` view), and a run function
with a timeout. Built-ins return their results in the exact format of the
original MOSS tools (see `protocol`), so real MOSS plugin checkpoints read
them as trained. Others come from the `mosslm.plugins` entry-point group or
from a Python file (`--plugin-path FILE.py`) that defines `PLUGIN` or `PLUGINS`.
"""

from __future__ import annotations

import importlib.util
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from .. import protocol
from ..protocol import Command

ENTRY_POINT_GROUP = "mosslm.plugins"


class Sourced(str):
    """Result text that also carries its sources, one (title, url) per snippet line."""

    sources: list[tuple[str, str]]

    def __new__(cls, text: str, sources: list[tuple[str, str]]):
        obj = super().__new__(cls, text)
        obj.sources = sources
        return obj


def _generic_block(command: Command, value: str | None) -> str:
    return f"{command} => {protocol.escape(value) if value is not None else 'No result.'}\n"


@dataclass(frozen=True)
class Plugin:
    name: str                                   # the command name, e.g. "Calculate"
    run: Callable[[str], str | None]            # argument -> result text; None = no result
    label: str = ""                             # capability label, e.g. "Calculator"
    arg_name: str = "input"                     # the API's argument, e.g. "expression"
    description: str = ""
    timeout: float = 10.0
    block: Callable[[Command, str | None], str] = field(default=_generic_block)  # protocol result block
    client_side: bool = False                   # an API client's tool: the client runs it, not us
    schema: dict | None = None                  # a JSON schema of its own (else: one string argument)

    @property
    def api(self) -> str:
        return f"{self.name}({self.arg_name})"

    @property
    def capability(self) -> tuple[str, str]:
        return (self.label or self.name, self.api)

    def json_schema(self) -> dict:
        if self.schema is not None:
            return self.schema
        return {"type": "object", "properties": {self.arg_name: {"type": "string"}}, "required": [self.arg_name]}

    def openai_tool(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.json_schema()}}

    def execute(self, command: Command) -> tuple[str, list[tuple[str, str]]]:
        """The result block and its sources; a tool that raises gives the protocol's no-result form."""
        try:
            value = self.run(command.arg)
        except Exception:  # a broken tool must not break the conversation
            value = None
        return self.block(command, value), list(getattr(value, "sources", []))


def _calculate(expression: str) -> str | None:
    from .calculator import NO_RESULT, calculate

    value = calculate(expression)
    return None if value == NO_RESULT else value


def _builtin(name: str, run: Callable[[str], str | None], description: str, timeout: float,
             block: Callable[[Command, str | None], str]) -> Plugin:
    label, _, arg_name = protocol.PLUGINS[name]
    return Plugin(name, run, label, arg_name, description, timeout, block)


def sourced_hits(hits: list[tuple[str, str, str]]) -> Sourced | None:
    """(text, title, url) hits as the Search plugin's result: one snippet per line, with its sources."""
    if not hits:
        return None
    return Sourced("\n".join(" ".join(t.split()) for t, _, _ in hits), [(title, url) for _, title, url in hits])


def kb_search(kb_name: str | Path, query: str) -> Sourced | None:
    """Top-3 passages of a local knowledge base (a name or a .sqlite path)."""
    from .kb import search

    return sourced_hits([(h.text, h.title, h.url) for h in search(kb_name, query, k=3)])


def _search(query: str) -> str | None:
    """Top-3 snippets, one per line: from the web when a backend is configured
    (see websearch), else from the local knowledge base ($MOSSLM_KB, default "default")."""
    import os

    from .websearch import configured_backend, web_search

    if configured_backend():
        return sourced_hits([(h.snippet, h.title, h.url) for h in web_search(query)])
    return kb_search(os.environ.get("MOSSLM_KB", "default"), query)


def _search_block(command: Command, value: str | None) -> str:
    if value is None:
        return f"{command} =>\nNo result.\n"
    return protocol.search_block(command, value.split("\n"))


def _solve(equations: str) -> str | None:
    from .solve import solve

    return solve(equations, timeout=8.0)


def _text2image(description: str) -> str | None:
    from .text2image import text2image

    return text2image(description)


BUILTINS: dict[str, Plugin] = {
    "Search": _builtin("Search", _search, "Search the web (SearXNG or Serper, when configured) or the local "
                       "knowledge base (moss kb add) and return the top 3 passages.", 10.0, _search_block),
    "Calculate": _builtin("Calculate", _calculate, "Evaluate an arithmetic expression: + - * / ^, "
                          "parentheses, sqrt, sin, log, pi, e and other math functions.", 5.0,
                          protocol.calculate_block),
    "Solve": _builtin("Solve", _solve, "Solve an equation or a system of equations separated by ';', "
                      "e.g. x^2-4=0 or 2x+y=5;x-y=1.", 10.0, protocol.solve_block),
    "Text2Image": _builtin("Text2Image", _text2image, "Draw an image from a description (needs an image "
                           "backend: MOSSLM_T2I_URL or MOSSLM_T2I_DIFFUSERS).", 150.0, protocol.text2image_block),
}


def disabled_reason(name: str) -> str | None:
    """Why a built-in cannot run here (None when it can)."""
    if name == "Text2Image":
        from .text2image import disabled_reason as reason
        return reason()
    return None


class PluginError(ValueError):
    pass


def load_file(path: str | Path) -> list[Plugin]:
    """Plugins defined in one Python file (`PLUGIN = Plugin(...)` or `PLUGINS = [...]`)."""
    p = Path(path)
    if not p.is_file():
        raise PluginError(f"plugin file not found: {p}")
    spec = importlib.util.spec_from_file_location(f"mosslm_user_plugin_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise PluginError(f"{p}: the plugin file failed to load: {e}") from e
    found = list(getattr(module, "PLUGINS", [])) + ([module.PLUGIN] if hasattr(module, "PLUGIN") else [])
    if not found or not all(isinstance(x, Plugin) for x in found):
        raise PluginError(f"{p}: define PLUGIN = Plugin(...) or PLUGINS = [Plugin(...), ...]")
    return found


def discover(plugin_paths: list[str] = ()) -> dict[str, Plugin]:
    """Built-ins, then installed entry points, then files; later names override earlier ones."""
    found = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        obj = obj() if callable(obj) and not isinstance(obj, Plugin) else obj
        for plugin in obj if isinstance(obj, (list, tuple)) else [obj]:
            found[plugin.name] = plugin
    for path in plugin_paths:
        for plugin in load_file(path):
            found[plugin.name] = plugin
    return found


_pool = ThreadPoolExecutor(max_workers=protocol.MAX_COMMANDS, thread_name_prefix="moss-plugin")


def run_commands(commands: list[Command], enabled: dict[str, Plugin]) -> str | None:
    """Run up to 4 commands concurrently; drop unknown/disabled ones.

    A tool that raises or overruns its timeout yields the protocol's
    `No result.` form; a tool can never crash the turn.
    """
    return run_commands_with_sources(commands, enabled)[0]


def run_commands_with_sources(commands: list[Command], enabled: dict[str, Plugin]
                              ) -> tuple[str | None, list[tuple[str, str]]]:
    """As run_commands, plus the (title, url) behind each citation number <|n|>."""
    runnable = [(c, enabled[c.name]) for c in commands[:protocol.MAX_COMMANDS] if c.name in enabled]
    futures = [(c, p, _pool.submit(p.execute, c)) for c, p in runnable]
    results: list[tuple[Command, str, list[tuple[str, str]]]] = []
    for command, plugin, future in futures:
        try:
            block, sources = future.result(timeout=plugin.timeout)
        except FutureTimeout:
            future.cancel()
            block, sources = plugin.block(command, None), []
        except Exception:
            block, sources = plugin.block(command, None), []
        results.append((command, block, sources))
    results.sort(key=lambda r: protocol.result_rank(r[0].name))  # the order the blocks are shown in
    citations = [src for command, _, sources in results if command.name == "Search" for src in sources]
    text = protocol.order_results(_renumber_search([(c, b) for c, b, _ in results]))
    return text, citations


def _renumber_search(blocks: list[tuple[Command, str]]) -> list[tuple[Command, str]]:
    """Search snippet indices continue across several Search calls in one turn."""
    counter = iter(range(1, 1000))
    return [(c, re.sub(r"(?m)^<\|\d+\|>: ", lambda m: f"<|{next(counter)}|>: ", b) if c.name == "Search" else b)
            for c, b in blocks]
