"""Throttle: at most ``count`` messages per ``period`` seconds, per handler.

A sliding window: before calling the handler, the middleware waits (``await``, never
blocking) until fewer than ``count`` calls started within the last ``period``
seconds. Waiting messages stay in flight, unsettled; with ``concurrency=N`` the
workers queue for admission in turn. The state belongs to each wrapped handler:
a Throttle added at router level limits every handler separately.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eventmill.errors import ConfigurationError
from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult

__all__ = ["Throttle", "ThrottleConfig"]


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """Settings of :class:`Throttle`."""

    count: int = 100
    """Most handler calls started within any window of ``period`` seconds (default 100)."""
    period: float = 1.0
    """Length of the window in seconds (default 1)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigurationError("ThrottleConfig.count must be >= 1")
        if self.period <= 0:
            raise ConfigurationError("ThrottleConfig.period must be > 0")


class Throttle:
    """Middleware limiting each handler's rate; see the module docstring.

    ``sleep`` and ``clock`` are injectable for tests (defaults: :func:`asyncio.sleep`,
    :func:`time.monotonic`).
    """

    def __init__(
        self,
        config: ThrottleConfig | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or ThrottleConfig()
        self._sleep = sleep
        self._clock = clock

    def __call__(self, handler: Handler) -> Handler:
        count, period = self.config.count, self.config.period
        sleep, clock = self._sleep, self._clock
        started: deque[float] = deque(maxlen=count)  # bounded: only the last `count` matter
        lock = asyncio.Lock()

        async def throttle(msg: Message) -> HandlerResult:
            async with lock:
                while len(started) == count:
                    wait = started[0] + period - clock()
                    if wait <= 0:
                        break
                    await sleep(wait)
                started.append(clock())
            return await handler(msg)

        return throttle
