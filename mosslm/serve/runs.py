"""Generation runs for the HTTP layer: blocking agent or engine work on threads, read from asyncio.

Each choice of a request runs on a thread of its own (the agent's passes and
tools block), and hands its items to the event loop through an asyncio queue,
so a thousand waiting streams cost no executor threads. Stopping a run (the
client went away, or the request's wall-time cap passed) closes its generator,
which cancels the engine request: the KV slot is free by the next engine step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..engine.engine import EngineFull, EngineStopped, RequestTooLarge
from ..engine.generate import ContextTooLong
from .errors import APIError, overloaded

_END = object()


@dataclass
class Run:
    """One choice: `make()` returns the blocking iterator of its items."""
    index: int
    make: Callable[[], Iterator[Any]]
    error: BaseException | None = None
    timed_out: bool = False
    first_at: float | None = None
    times: list[float] = field(default_factory=list)


async def run_all(runs: list[Run], deadline: float, stop: threading.Event) -> AsyncIterator[tuple[int, Any]]:
    """Yield (choice index, item) from all runs as they come; ends when every run has ended."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()

    def produce(run: Run) -> None:
        items = None
        try:
            items = run.make()
            for item in items:
                now = time.monotonic()
                run.first_at = run.first_at or now
                run.times.append(now)
                loop.call_soon_threadsafe(out.put_nowait, (run.index, item))
                if stop.is_set():
                    break
                if now > deadline:
                    run.timed_out = True
                    break
        except BaseException as e:  # handed to the request, which answers with a clean error
            run.error = e
        finally:
            if items is not None and hasattr(items, "close"):
                items.close()  # cancels the engine request if it is still generating
            try:
                loop.call_soon_threadsafe(out.put_nowait, (run.index, _END))
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

    for run in runs:
        threading.Thread(target=produce, args=(run,), name=f"mosslm-run-{run.index}", daemon=True).start()
    live = len(runs)
    try:
        while live:
            index, item = await out.get()
            if item is _END:
                live -= 1
                continue
            yield index, item
    finally:
        stop.set()  # the reader left early (disconnect): every run stops at its next item


def client_error(runs: list[Run], param: str) -> APIError | None:
    """What the first failed run means for the client; anything unexpected is re-raised (a real bug)."""
    for run in runs:
        error = run.error
        if error is None:
            continue
        if isinstance(error, APIError):
            return error
        if isinstance(error, (ContextTooLong, RequestTooLarge)):
            return APIError(413, str(error), param, "context_length_exceeded")
        if isinstance(error, EngineFull):
            return overloaded(str(error))
        if isinstance(error, EngineStopped):
            return overloaded("the server is shutting down", 5.0)
        raise error
    return None
