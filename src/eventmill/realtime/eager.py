"""Run a coroutine at once, in the caller's stack, until it first waits.

This is what Python 3.12's eager tasks do, for Python 3.11 and without even a task
object when the coroutine never waits. Writing a frame through ASGI ``send`` is a
coroutine that, on uvicorn, finishes without waiting unless the client's socket is
full: the hub writes frames this way, so a frame costs a few calls instead of waking
a task per connection. A coroutine that does wait is handed to a task that carries it
on from where it stopped, as a task would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from types import CoroutineType
from typing import Any

__all__ = ["start"]


def start(awaitable: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run ``awaitable`` (a coroutine) until it finishes (return ``None``; an exception
    it raises is raised here) or waits (return the task that finishes it). Another kind
    of awaitable is wrapped in a future as it is."""
    if type(awaitable) is not CoroutineType and not isinstance(awaitable, Coroutine):
        return asyncio.ensure_future(awaitable)
    coro: Coroutine[Any, Any, None] = awaitable
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_carry_on(coro, yielded))


async def _carry_on(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive ``coro``, which yielded ``yielded``, as a task would: wait for the future it
    yielded, then resume it (it reads the future's outcome itself); a cancellation is
    thrown into it."""
    while True:
        try:
            if yielded is None:  # a bare yield (``asyncio.sleep(0)``): let others run
                await asyncio.sleep(0)
            elif getattr(yielded, "_asyncio_future_blocking", False):
                yielded._asyncio_future_blocking = False
                await asyncio.wait((yielded,))
            else:
                raise RuntimeError(f"a coroutine run eagerly yielded {yielded!r}")
        except BaseException as exc:  # cancelled while waiting: the coroutine decides
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
