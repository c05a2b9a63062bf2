"""The three broker workloads, shared by every side (eventmill, raw client, FastStream).

A *side* implements, for one broker:

* ``one_publisher(n, payload)`` - workload (a): one task awaiting each publish while a
  group consumer acks each message. A warm-up message goes through the whole path
  first (so group joins and stream creation are not measured); the clock runs from
  the first timed publish until the consumer handled the last message.
* ``concurrent(n, payload)`` - workload (b): :data:`PUBLISHERS` tasks, each awaiting
  its publishes one after another; no consumer. One warm-up publish first.
* ``drain(n, payload)`` - workload (c): ``n`` messages are published first (not
  timed); then a group consumer acks each one. The clock runs from the first message
  handled to the last (so connecting and joining the group are not measured).

Each returns msgs/s. :class:`Tally` is the consumer's counter every side uses.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

#: Concurrent publishing tasks in workload (b).
PUBLISHERS = 100

#: Longest a workload may wait for its consumer before it counts as failed.
TIMEOUT = 300.0


class Side(Protocol):
    """One implementation of the three workloads on one broker."""

    label: str

    async def one_publisher(self, n: int, payload: bytes) -> float: ...

    async def concurrent(self, n: int, payload: bytes) -> float: ...

    async def drain(self, n: int, payload: bytes) -> float: ...


def unique(kind: str) -> str:
    """A name no other run (or helper on this machine) uses: ``bench-<kind>-<hex>``."""
    return f"bench-{kind}-{uuid.uuid4().hex[:10]}"


class Tally:
    """Counts handled messages; ``done`` is set at ``want``. Records the times of the
    first and the last, for :meth:`drain_rate`."""

    __slots__ = ("done", "first", "last", "n", "want")

    def __init__(self, want: int) -> None:
        self.want = want
        self.n = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.n += 1
        if self.n == 1:
            self.first = time.perf_counter()
        if self.n == self.want:
            self.last = time.perf_counter()
            self.done.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), TIMEOUT)

    def drain_rate(self) -> float:
        """msgs/s from the first message handled to the last."""
        if self.want < 2 or self.last <= self.first:
            return float("nan")
        return (self.want - 1) / (self.last - self.first)


async def timed_publishes(
    n: int, publish: Callable[[], Awaitable[object]], tally: Tally | None = None
) -> float:
    """msgs/s of awaiting ``publish()`` ``n`` times one after another (and, with
    ``tally``, until the consumer handled them all)."""
    t0 = time.perf_counter()
    for _ in range(n):
        await publish()
    if tally is not None:
        await tally.wait()
    return n / (time.perf_counter() - t0)


async def timed_concurrent(
    n: int, publish: Callable[[], Awaitable[object]], publishers: int = PUBLISHERS
) -> float:
    """msgs/s of ``publishers`` tasks each awaiting ``publish()`` ``n // publishers`` times."""
    per = n // publishers

    async def one() -> None:
        for _ in range(per):
            await publish()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(publishers)))
    return per * publishers / (time.perf_counter() - t0)


async def timed_batches(n: int, batch: int, send: Callable[[int], Awaitable[object]]) -> float:
    """msgs/s of ``send(k)`` over ``n`` messages in batches of ``batch``."""
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        await send(min(batch, n - start))
    return n / (time.perf_counter() - t0)
