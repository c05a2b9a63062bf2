"""Counting the asyncio tasks a piece of code creates (for the publish-path tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any


@contextlib.contextmanager
def tasks_created() -> Iterator[list[str]]:
    """Yield a list that collects the name of the coroutine of every task created on the
    running loop inside the block."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    created: list[str] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(previous)
