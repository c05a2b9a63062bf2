"""Subscriptions of the sqlite:// backend.

They reach the bus only through :class:`Host`, the internal interface its
:class:`~eventmill.pubsub.sqlite.SQLitePubSub` implements; its members are private
by convention (the bus's public API is the PubSub contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Protocol, TypeVar

from eventmill._sqlite import is_locked
from eventmill.errors import ClosedError, PubSubError
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._subscription import BufferedSubscription, Unsettled, stop_task
from eventmill.pubsub.sqlite._config import SQLiteConfig
from eventmill.pubsub.sqlite._ops import Fetch, Flush, Op, Read, Release

__all__ = ["Host", "SQLiteSubscription"]

log = logging.getLogger("eventmill.pubsub.sqlite")

T = TypeVar("T")


class Host(Protocol):
    """What a subscription needs of its bus (private by convention)."""

    @property
    def config(self) -> SQLiteConfig: ...

    @property
    def _aborted(self) -> bool:
        """Whether the bus was aborted (nothing is released then)."""

    async def _call(self, make: Callable[[asyncio.Future[T]], Op]) -> T:
        """Run the operation ``make(done)`` on the writer thread; return its result."""

    def _settle(self, ok: bool, topic: str, group: str, seq: int, owner: str) -> None:
        """Queue an ack (``ok``) or nack for the writer's next batch."""

    def _forget(self, sub: SQLiteSubscription) -> None:
        """Unregister a closed (or aborted) subscription."""


class SQLiteSubscription(BufferedSubscription[tuple[int, Message]]):
    """An open subscription of :class:`~eventmill.pubsub.sqlite.SQLitePubSub` (see
    :class:`~eventmill.Subscription`).

    A background task, started by the first read, keeps up to ``prefetch``
    messages leased ahead of the readers (no more than ``max_unsettled`` leaves room
    for) and refills when half are handed out.
    """

    def __init__(
        self,
        owner: Host,
        topic: str,
        group: str | None,
        head: int,
        skip: tuple[str, str] | None = None,
    ) -> None:
        cfg = owner.config
        what = f"sqlite:// subscription to {topic!r}" + (f" (group {group!r})" if group else "")
        super().__init__(topic, group, Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what))
        self._owner = owner
        self._skip = skip
        self._token = uuid.uuid4().hex
        self._after = head  # ephemeral: last seq seen
        self._held: dict[Message, int] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._error: PubSubError | None = None
        prefetch = cfg.prefetch
        self._prefetch = prefetch
        self._refill_at = prefetch // 2
        self._max_unsettled = cfg.max_unsettled

    def _take(self, item: tuple[int, Message]) -> Message:
        seq, msg = item
        self._held[msg] = seq
        msg._on_settle = self._settle
        if len(self._buffer) <= self._refill_at:
            self._room.set()
        return msg

    def _idle(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name=f"sqlite-pump:{self._topic}")

    async def _run_pump(self) -> None:
        owner = self._owner
        poll = owner.config.poll_interval
        backoff = Backoff(5.0, poll)
        while not self._closed:
            limit = self._prefetch - len(self._buffer)
            if self._max_unsettled is not None:
                limit = min(limit, self._max_unsettled - self._limit.count - len(self._buffer))
            if len(self._buffer) > self._refill_at or limit <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()
            try:
                if self._group is None:
                    rows = await owner._call(partial(Read, self._topic, self._after, limit))
                    if rows:
                        self._after = rows[-1][0]
                else:
                    rows = await owner._call(
                        partial(Fetch, self._topic, self._group, self._token, limit)
                    )
            except ClosedError:
                break
            except PubSubError as exc:
                # Another process holding the lock is transient: retry quietly.
                # Anything else is raised to the readers, then retried as well.
                log.warning("sqlite:// fetch from %r failed: %s", self._topic, exc)
                if not is_locked(exc):
                    self._error = exc
                    self._readers.wake_all()
                await backoff.sleep()
                continue
            backoff.reset()
            if self._closed:
                break
            if rows:
                self._buffer.extend(rows)
                self._readers.wake(len(rows))
                if len(rows) >= limit:
                    continue  # maybe more: fetch again once there is room
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await self._wake.wait()

    def _settle(self, msg: Message, ok: bool) -> bool:
        seq = self._held.pop(msg, None)
        if seq is None or self._closed:
            return False
        self._limit.done()
        if not self._room.is_set():
            self._room.set()  # the pump may have waited for room under max_unsettled
        if self._group is not None:
            self._owner._settle(ok, self._topic, self._group, seq, self._token)
        elif not ok:  # ephemeral: deliver again to this subscription
            self._buffer.appendleft((seq, msg.copy()))
            self._readers.wake()
        return True

    def _notify(self) -> None:
        self._wake.set()

    async def flush(self) -> None:
        """Wait until the settlements made so far on this subscription are committed
        (they then survive a process kill; see :attr:`SQLiteConfig.synchronous`)."""
        if not self._closed:
            await self._owner._call(Flush)

    async def close(self) -> None:
        """Flush settlements, release unsettled messages to the group, end iteration."""
        if self._closed:
            return
        self._closed = True
        self._readers.wake_all()
        self._limit.close()
        self._room.set()
        self._wake.set()
        await stop_task(self._pump)
        for msg in self._held:
            msg._release()
        self._held.clear()
        self._buffer.clear()
        owner = self._owner
        owner._forget(self)
        if self._group is not None and not owner._aborted:
            try:
                await owner._call(partial(Release, self._topic, self._token))
            except ClosedError:
                pass
            except PubSubError as exc:
                # Settlements stay queued for the next transaction; the leases run
                # out after visibility_timeout. Closing must not fail the caller.
                log.warning("sqlite:// could not release leases on %r: %s", self._topic, exc)

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): its leases are no
        longer renewed and run out after ``visibility_timeout``."""
        if self._closed:
            return
        self._vanish()
        self._owner._forget(self)

    def _vanish(self) -> None:
        """Stop without flushing or releasing anything."""
        self._closed = True
        self._readers.wake_all()
        self._limit.close()
        if self._pump is not None:
            self._pump.cancel()
        for msg in self._held:
            msg._release()
