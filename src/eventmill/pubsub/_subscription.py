"""Plumbing shared by the backends' subscriptions and PubSub classes.

* :class:`ReaderQueue` - the tasks parked in ``__anext__`` waiting for a message,
  woken in FIFO order, with the cancellation hand-off every backend needs.
* :class:`AsyncCloseable` / :class:`AsyncStartCloseable` - ``async with`` support
  for anything with ``close()`` (and ``start()``).
* :class:`TopicGroup` - the ``topic`` / ``group`` properties of a subscription.
* :class:`InFlight` - counts calls in progress (publishes), so ``close`` can wait
  for them.
* :class:`BufferedSubscription` - a subscription fed by a background task into a
  local buffer: the whole ``Subscription`` contract except what a backend must decide
  (what taking one item out of the buffer does, what to do before a reader parks,
  and ``close``).
* :class:`Unsettled` - the ``max_unsettled`` bound of one subscription: counts the
  messages handed out and not settled, holds readers at the bound, and warns once
  when they are held there for ``stall_warning`` seconds.
* :func:`stop_task` - cancel a background task and wait until it has ended, even if a
  client library swallowed the cancellation.

Every class here has empty ``__slots__`` where it is a mixin, so a backend class
that uses ``__slots__`` (memory://) keeps its compact layout. None of them adds
work to the path that hands out an already buffered message, except the one
:meth:`BufferedSubscription._take` call a backend needs anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Sized
from types import TracebackType
from typing import Generic, Self, TypeVar

from eventmill.message import Message

__all__ = [
    "AsyncCloseable",
    "AsyncStartCloseable",
    "BufferedSubscription",
    "InFlight",
    "ReaderQueue",
    "TopicGroup",
    "Unsettled",
    "stop_task",
]

T = TypeVar("T")


class ReaderQueue(deque["asyncio.Future[None]"]):
    """Readers waiting for a message, oldest first (a deque of futures).

    A reader calls :meth:`wait` when it found nothing to take; whoever adds
    messages calls :meth:`wake` with how many were added, so each wakes at most one
    reader. Being a deque, ``if readers:`` and ``len(readers)`` cost nothing extra.
    """

    __slots__ = ()

    async def wait(self, pending: Sized) -> None:
        """Park until woken by :meth:`wake` / :meth:`wake_all`.

        ``pending`` is the buffer the reader takes from. If the reader is cancelled
        after it was woken but before it ran, and ``pending`` still holds something,
        the wake-up is passed on to the next reader, so no message is left waiting
        while readers sleep.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and pending:
                self.wake(1)
            raise

    def wake(self, n: int = 1) -> None:
        """Wake up to ``n`` waiting readers, oldest first (skipping cancelled ones)."""
        while n > 0 and self:
            fut = self.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        """Wake every waiting reader (on close or error: each re-checks its state)."""
        for fut in self:
            if not fut.done():
                fut.set_result(None)
        self.clear()


async def stop_task(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` and wait until it has ended; its outcome is discarded.

    A single ``cancel()`` is not enough on Python 3.11: ``asyncio.wait_for`` returns
    the inner result when it completes in the same turn as the cancellation and so
    swallows it (redis-py sends every command through ``wait_for``), and the task then
    runs on into its next blocking read. The task is cancelled again each
    ``_RECANCEL`` seconds until it ends, so a close never waits out a blocking read.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait({task}, timeout=_RECANCEL)
    if not task.cancelled():
        task.exception()  # retrieved: a failed task is not reported as never awaited


_RECANCEL = 0.01


class Unsettled:
    """The ``max_unsettled`` bound of one subscription.

    ``count`` is the number of messages handed out and not yet settled: a backend
    calls :meth:`add` for each message it hands out and :meth:`done` when one of them
    is settled (or dropped). While ``count`` is at ``limit`` (``None``: no bound), a
    reader calls :meth:`wait`, which returns once a settlement made room (or
    :meth:`close` was called; the reader then re-checks its state). A reader held at
    the bound for ``warn_after`` seconds makes the subscription log one warning that
    says why; it warns again only after it left the bound and was held again.
    """

    __slots__ = (
        "_describe",
        "_held_since",
        "_log",
        "_timer",
        "_waiters",
        "_warn_after",
        "cap",
        "count",
        "limit",
    )

    def __init__(
        self,
        limit: int | None,
        warn_after: float | None,
        log: logging.Logger,
        describe: str,
    ) -> None:
        self.limit = limit
        self.cap = sys.maxsize if limit is None else limit
        """``limit``, or the largest int when there is none: ``count >= cap`` is :attr:`full`."""
        self.count = 0
        self._warn_after = warn_after
        self._log = log
        self._describe = describe
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._held_since = 0.0

    @property
    def full(self) -> bool:
        """Whether no further message may be handed out."""
        return self.count >= self.cap

    def add(self, n: int = 1) -> None:
        """``n`` more messages were handed out."""
        self.count += n

    def done(self) -> None:
        """One message handed out was settled: room for the next, if a reader waits."""
        self.count -= 1
        if self._waiters or self._timer is not None:  # else nothing to do: the common case
            if self._waiters:
                self._wake_one()
            if self._timer is not None and self.count < self.cap:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        """Forget every message (the subscription closed) and wake every reader."""
        self.count = 0
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait(self) -> None:
        """Park until a settlement makes room (call only while :attr:`full`)."""
        loop = asyncio.get_running_loop()
        if self._timer is None and self._warn_after is not None:
            self._held_since = loop.time()
            self._timer = loop.call_later(self._warn_after, self._warn)
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and not self.full:
                self._wake_one()  # woken, then cancelled: pass the room on
            raise

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _warn(self) -> None:
        self._timer = None
        if not self.full or not any(not f.done() for f in self._waiters):
            return
        held = asyncio.get_running_loop().time() - self._held_since
        self._log.warning(
            "%s: %d messages handed out and not settled for %.0fs; "
            "settle them (ack/nack) or raise max_unsettled",
            self._describe,
            self.count,
            held,
        )


class InFlight:
    """Calls in progress: ``with in_flight:`` around each; ``await in_flight.idle()``
    returns once none is (at once if none is)."""

    __slots__ = ("_count", "_idle")

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self._count += 1
        self._idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        self._count -= 1
        if not self._count:
            self._idle.set()

    async def idle(self) -> None:
        """Wait until no call is in progress."""
        await self._idle.wait()


class AsyncCloseable:
    """``async with obj:`` returns ``obj`` and awaits ``obj.close()`` on exit."""

    __slots__ = ()

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncStartCloseable(AsyncCloseable):
    """Like :class:`AsyncCloseable`, but entering awaits ``obj.start()`` first (PubSubs)."""

    __slots__ = ()

    async def start(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self


class TopicGroup:
    """The ``topic`` and ``group`` properties, read from ``_topic`` and ``_group``."""

    __slots__ = ()
    _topic: str
    _group: str | None

    @property
    def topic(self) -> str:
        """The topic subscribed to."""
        return self._topic

    @property
    def group(self) -> str | None:
        """The consumer group, or ``None`` for an ephemeral subscription."""
        return self._group


class BufferedSubscription(TopicGroup, AsyncCloseable, Generic[T]):
    """A subscription whose messages wait in a local buffer until a reader takes them.

    The backend's background task appends items to ``_buffer`` and calls
    ``_readers.wake(n)``; ``__anext__`` may be awaited by many tasks at once and
    ends (``StopAsyncIteration``) once ``_closed`` is set - ``close`` must then call
    ``_readers.wake_all()`` and ``_limit.close()`` so parked readers see it. At
    most ``_limit.limit`` messages are handed out and not settled; the subclass
    calls ``_limit.done()`` once for each of them that is settled. Subclasses
    implement:

    * :meth:`_take` - turn one buffered item into the message handed out (record it
      as held, ask for more when the buffer runs low...). Called once per message.
    * :meth:`_idle` - optional: runs each time a reader finds the buffer empty,
      before it parks (start the fetcher lazily, raise a pending error...).
    * ``close`` - the backend's settlement and release rules.
    """

    def __init__(self, topic: str, group: str | None, unsettled: Unsettled) -> None:
        self._topic = topic
        self._group = group
        self._buffer: deque[T] = deque()
        self._readers = ReaderQueue()
        self._closed = False
        self._limit = unsettled

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        buffer = self._buffer
        unsettled = self._limit
        while True:
            if self._closed:
                raise StopAsyncIteration
            if unsettled.full:
                await unsettled.wait()
            elif buffer:
                unsettled.count += 1
                return self._take(buffer.popleft())
            else:
                self._idle()
                await self._readers.wait(buffer)

    def _take(self, item: T) -> Message:
        raise NotImplementedError

    def _idle(self) -> None:
        """Hook run when a reader found the buffer empty, before it parks."""
