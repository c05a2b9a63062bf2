"""Helpers shared by the router tests: a fake clock and a running-router context."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from eventmill.router import Router


class FakeClock:
    """A monotonic clock that only moves when ``sleep`` is awaited (or ``advance`` called).

    ``sleep`` records every requested interval, so tests assert backoff bounds
    without measuring wall-clock time.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(router: Router, *, timeout: float = 10.0) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``router`` in a task; close it (gracefully) and await ``run()`` on exit."""
    task = asyncio.create_task(router.run())
    await asyncio.wait_for(router.running(), timeout)
    try:
        yield task
    finally:
        await asyncio.wait_for(router.close(), timeout)
        await asyncio.wait_for(task, timeout)
