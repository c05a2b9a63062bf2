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

Every class here has empty ``__slots__`` where it is a mixin, so a backend class
that uses ``__slots__`` (memory://) keeps its compact layout. None of them adds
work to the path that hands out an already buffered message, except the one
:meth:`BufferedSubscription._take` call a backend needs anyway.
"""

from __future__ import annotations

import asyncio
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
    ``_readers.wake_all()`` so parked readers see it. Subclasses implement:

    * :meth:`_take` - turn one buffered item into the message handed out (record it
      as held, ask for more when the buffer runs low...). Called once per message.
    * :meth:`_idle` - optional: runs each time a reader finds the buffer empty,
      before it parks (start the fetcher lazily, raise a pending error...).
    * ``close`` - the backend's settlement and release rules.
    """

    def __init__(self, topic: str, group: str | None) -> None:
        self._topic = topic
        self._group = group
        self._buffer: deque[T] = deque()
        self._readers = ReaderQueue()
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        buffer = self._buffer
        while True:
            if self._closed:
                raise StopAsyncIteration
            if buffer:
                return self._take(buffer.popleft())
            self._idle()
            await self._readers.wait(buffer)

    def _take(self, item: T) -> Message:
        raise NotImplementedError

    def _idle(self) -> None:
        """Hook run when a reader found the buffer empty, before it parks."""
