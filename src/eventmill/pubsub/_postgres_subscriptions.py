"""Subscriptions of the postgresql:// backend (group and ephemeral)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson

from eventmill.errors import ClosedError
from eventmill.message import Message

if TYPE_CHECKING:
    from eventmill.pubsub.postgres import PostgresPubSub

__all__ = ["EphemeralSubscription", "GroupSubscription", "Lease"]

log = logging.getLogger("eventmill.pubsub.postgres")

#: (gid, seq, lease) of one delivery row held by a consumer.
Lease = tuple[int, int, int]


def _retrieve(task: asyncio.Task[float | None]) -> None:
    if not task.cancelled():
        task.exception()


class GroupSubscription:
    """One member of a consumer group.

    Claims up to ``prefetch`` deliveries at a time (``FOR UPDATE SKIP LOCKED``,
    leased for ``visibility_timeout``), hands them out in seq order, and sleeps
    when there is no work until a NOTIFY for its topic, a lease expiring, or
    ``poll_interval`` wakes it. Leases of messages it holds are renewed while it
    is open; ``close()`` flushes settlements and releases what it still holds.
    """

    def __init__(self, owner: PostgresPubSub, topic: str, group: str, tid: int, gid: int) -> None:
        self._owner = owner
        self._topic = topic
        self._group = group
        self.tid = tid
        self.gid = gid
        self._buffer: deque[Message] = deque()
        self.inflight: dict[Message, Lease] = {}
        self.wake = asyncio.Event()
        self._fetch_lock = asyncio.Lock()
        self._claim_task: asyncio.Task[float | None] | None = None
        self.closed = False

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str | None:
        return self._group

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            async with self._fetch_lock:
                if self._buffer or self.closed:
                    continue
                self.wake.clear()
                task = asyncio.create_task(self._claim())
                task.add_done_callback(_retrieve)  # a cancelled waiter must not leak errors
                self._claim_task = task
                try:
                    next_visible = await asyncio.shield(task)
                except ClosedError:
                    raise StopAsyncIteration from None
                if self._buffer or self.closed:
                    continue
                timeout = self._owner.config.poll_interval
                if next_visible is not None:
                    timeout = min(timeout, max(next_visible, 0.0) + 0.01)
                # Not wait_for: on 3.11 it can swallow a cancellation that races the wake-up.
                timer = asyncio.get_running_loop().call_later(timeout, self.wake.set)
                try:
                    await self.wake.wait()
                finally:
                    timer.cancel()

    async def _claim(self) -> float | None:
        """Lease a batch into the buffer; if none, return seconds to the next lease expiry."""
        cfg = self._owner.config
        sql = self._owner.sql

        async def op(conn: Any) -> tuple[list[Any], float | None]:
            rows = await conn.fetch(
                sql.claim, self.gid, cfg.prefetch, cfg.visibility_timeout, self.tid
            )
            if rows:
                return rows, None
            return rows, await conn.fetchval(sql.next_visible, self.gid)

        rows, next_visible = await self._owner.run(
            op, what="claim", deadline=None, stop=lambda: self.closed
        )
        gid, settle = self.gid, self._settle
        for seq, lease, msg_id, metadata, payload in rows:
            if msg_id is None:
                # Its message was deleted (retention racing a new group's backfill):
                # nothing to deliver, so drop the orphaned delivery row.
                self._owner.queue_settlement(self, (gid, seq, lease), True)
                continue
            msg = Message._received(msg_id, orjson.loads(metadata), payload, settle)
            self.inflight[msg] = (gid, seq, lease)
            self._buffer.append(msg)
        return next_visible

    def _settle(self, msg: Message, ok: bool) -> None:
        lease = self.inflight.pop(msg, None)
        if lease is None or self.closed:
            return
        self._owner.queue_settlement(self, lease, ok)

    async def close(self) -> None:
        """Flush settlements, release unsettled messages (redelivered at once), stop."""
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        task = self._claim_task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                task.cancel()
        self._owner.forget(self)
        await self._owner.flush_settlements()
        held = list(self.inflight.items())
        self.inflight.clear()
        self._buffer.clear()
        for msg, _ in held:
            msg._on_settle = None
        if held:
            await self._owner.release([lease for _, lease in held], self.tid)

    def abort(self) -> None:
        """Stop without flushing or releasing anything (a crash)."""
        self.closed = True
        self.wake.set()
        for msg in self.inflight:
            msg._on_settle = None
        self.inflight.clear()
        self._buffer.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class EphemeralSubscription:
    """A group-less subscription: messages committed after ``subscribe`` returned.

    Fed by the bus's LISTEN connection (the NOTIFY of each publish names the seqs it
    committed). Holds at most ``ephemeral_buffer`` messages; when full the oldest is
    dropped. Nack puts the message back at the front of this subscription only;
    nothing is stored server-side for it.
    """

    def __init__(self, owner: PostgresPubSub, topic: str, tid: int, limit: int) -> None:
        self._owner = owner
        self._topic = topic
        self.tid = tid
        self._limit = limit
        self._items: deque[Message] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.dropped = 0
        self.closed = False

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group(self) -> str | None:
        return None

    def push(self, msg_id: str, metadata: dict[str, str], payload: bytes) -> None:
        if self.closed:
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning(
                    "ephemeral subscription to %r is full (%d messages): dropped %d so far",
                    self._topic,
                    self._limit,
                    self.dropped,
                )
        self._items.append(Message._received(msg_id, metadata, payload, self._settle))
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _settle(self, msg: Message, ok: bool) -> None:
        if not ok and not self.closed:
            self._items.appendleft(
                Message._received(msg.id, dict(msg.metadata), msg.payload, self._settle)
            )
            self._wake_one()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self._items:
                return self._items.popleft()
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and self._items:
                    self._wake_one()
                raise

    async def close(self) -> None:
        self.abort()
        self._owner.forget(self)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
