"""Retry: call the handler again after a failure, with exponential backoff and jitter.

Retry ``n`` (0-based) waits ``base = min(initial_interval * multiplier**n, max_interval)``
scaled by a random factor in ``[1 - jitter, 1 + jitter]``. The handler is called at
most ``1 + max_retries`` times; when the retries are spent, ``should_retry`` says no,
or the next wait would end after ``max_elapsed_time``, the last exception propagates
(to the poison queue or the router, which nacks). Waits are ``await``-ed, never
blocking the event loop; the message stays in flight (unsettled) meanwhile.

Place Retry inside PoisonQueue so only messages that failed every retry are parked.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from eventmill.errors import ConfigurationError
from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["Retry", "RetryConfig"]

_log = logging.getLogger("eventmill.router.retry")


def _always(exc: Exception) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Settings of :class:`Retry`."""

    max_retries: int = 3
    """Retries after the first call; 0 disables retrying (default 3)."""
    initial_interval: float = 0.1
    """Seconds before the first retry, before jitter (default 0.1)."""
    multiplier: float = 2.0
    """Factor by which each next interval grows (default 2.0)."""
    max_interval: float = 10.0
    """Cap of an interval, before jitter (default 10 seconds)."""
    max_elapsed_time: float | None = None
    """Give up when the next retry would start more than this many seconds after the
    first call; ``None`` means no limit (default)."""
    jitter: float = 0.5
    """Randomization factor in ``[0, 1]``: each wait is the interval times a random
    factor in ``[1 - jitter, 1 + jitter]`` (default 0.5; 0 for exact intervals)."""
    should_retry: Callable[[Exception], bool] = _always
    """Predicate on the exception: ``False`` propagates it without retrying (default:
    retry every exception)."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError("RetryConfig.max_retries must be >= 0")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ConfigurationError("RetryConfig intervals must be >= 0")
        if self.multiplier < 1:
            raise ConfigurationError("RetryConfig.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryConfig.jitter must be within [0, 1]")
        if self.max_elapsed_time is not None and self.max_elapsed_time < 0:
            raise ConfigurationError("RetryConfig.max_elapsed_time must be >= 0 or None")

    def interval(self, retry: int, rand: float) -> float:
        """The wait before retry number ``retry`` (0-based) for a uniform ``rand`` in [0, 1)."""
        base = min(self.initial_interval * self.multiplier**retry, self.max_interval)
        return base * (1.0 + self.jitter * (2.0 * rand - 1.0))


class Retry:
    """Middleware retrying a failed handler; see the module docstring.

    ``sleep``, ``clock`` and ``random`` are injectable for tests (defaults:
    :func:`asyncio.sleep`, :func:`time.monotonic`, :func:`random.random`).
    """

    def __init__(
        self,
        config: RetryConfig | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.config = config or RetryConfig()
        self._sleep = sleep
        self._clock = clock
        self._random = random

    def __call__(self, handler: Handler) -> Handler:
        cfg = self.config
        sleep, clock, rand = self._sleep, self._clock, self._random

        limit = cfg.max_elapsed_time

        async def retry(msg: Message) -> HandlerResult:
            start = clock() if limit is not None else 0.0
            try:
                return await handler(msg)
            except Exception as first:
                exc: Exception = first
            for n in range(cfg.max_retries):
                if not cfg.should_retry(exc):
                    raise exc
                wait = cfg.interval(n, rand())
                if limit is not None and clock() + wait - start > limit:
                    break
                info = current_handler()
                _log.info(
                    "retry %d/%d of message %s in handler %s in %.3fs after %s: %s",
                    n + 1,
                    cfg.max_retries,
                    msg.id,
                    info.name if info else "?",
                    wait,
                    type(exc).__name__,
                    exc,
                )
                await sleep(wait)
                try:
                    return await handler(msg)
                except Exception as again:
                    exc = again
            raise exc

        return retry
