"""Capped exponential backoff with jitter: the delays of every retry loop of the backends.

Reconnects, re-sends, re-fetches and re-polls all wait by the same rule: ``first``
seconds, doubling with each failure up to ``cap``, each delay drawn uniformly from
the upper half of that value ("equal jitter"), so clients that failed together do
not retry in step. Every backend's config names its cap ``reconnect_max_delay``.

Why not ``tenacity`` or ``backoff``: both wrap a call to retry (a decorator or a
``for attempt in ...`` block), while these loops are long-running consumers that
sleep after a failure and start over after a success, publish loops with a deadline
and a decision per error, and nats-py's reconnect hook, which asks for one delay
number. What they share is the schedule, which is this class.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff"]


class Backoff:
    """The delays of one retry loop: ``first``, ``2 * first``, ... up to ``cap``, jittered.

    ``next()`` returns the next delay (``sleep()`` waits it); ``reset()`` starts over,
    after a success. ``delay(n)`` is the delay after ``n`` failures, for callers that
    count failures themselves.
    """

    __slots__ = ("_failures", "cap", "first")

    def __init__(self, cap: float, first: float = 0.05) -> None:
        self.cap = cap
        self.first = min(first, cap)
        self._failures = 0

    def delay(self, failures: int) -> float:
        """The jittered delay after ``failures`` failures in a row (0: the first)."""
        ceiling = self.first * 2.0 ** min(failures, 64)
        if ceiling > self.cap:
            ceiling = self.cap
        return ceiling / 2 + random.random() * ceiling / 2

    def next(self) -> float:
        """The delay before the next attempt (counts one more failure)."""
        value = self.delay(self._failures)
        if self.first * 2.0**self._failures < self.cap:
            self._failures += 1
        return value

    async def sleep(self) -> None:
        """Wait the next delay."""
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        """Start over at ``first`` (after a success)."""
        self._failures = 0
