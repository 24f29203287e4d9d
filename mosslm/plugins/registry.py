"""Plugins the agent can run: a name, the protocol block it returns, a timeout.

Each built-in returns its result block in the exact format of the original
MOSS tools (see `protocol`), so real MOSS plugin checkpoints read them as trained.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable

from .. import protocol
from ..protocol import Command


@dataclass(frozen=True)
class Plugin:
    name: str                              # the command name, e.g. "Calculate"
    run: Callable[[Command], str]          # returns the protocol result block
    failure: Callable[[Command], str]      # the block for an error or timeout
    timeout: float = 10.0


def _calculate(command: Command) -> str:
    from .calculator import calculate

    value = calculate(command.arg)
    return protocol.calculate_block(command, None if value == "No result." else value)


BUILTINS: dict[str, Plugin] = {
    "Calculate": Plugin("Calculate", _calculate, lambda c: protocol.calculate_block(c, None), timeout=5.0),
}

_pool = ThreadPoolExecutor(max_workers=protocol.MAX_COMMANDS, thread_name_prefix="moss-plugin")


def run_commands(commands: list[Command], enabled: dict[str, Plugin]) -> str | None:
    """Run up to 4 commands concurrently; drop unknown/disabled ones.

    A tool that raises or overruns its timeout yields the protocol's
    `No result.` form; a tool can never crash the turn.
    """
    runnable = [(c, enabled[c.name]) for c in commands[:protocol.MAX_COMMANDS] if c.name in enabled]
    futures = [(c, p, _pool.submit(p.run, c)) for c, p in runnable]
    blocks = []
    for command, plugin, future in futures:
        try:
            blocks.append((command, future.result(timeout=plugin.timeout)))
        except FutureTimeout:
            future.cancel()
            blocks.append((command, plugin.failure(command)))
        except Exception:  # a broken tool must not break the conversation
            blocks.append((command, plugin.failure(command)))
    return protocol.order_results(blocks)
