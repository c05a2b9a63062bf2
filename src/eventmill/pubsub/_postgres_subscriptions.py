"""Subscriptions of the postgresql:// backend (group and ephemeral)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Self

import orjson

from eventmill.errors import ClosedError
from eventmill.message import Message
from eventmill.pubsub._subscription import AsyncCloseable, BufferedSubscription, TopicGroup

if TYPE_CHECKING:
    from eventmill.pubsub.postgres import PostgresPubSub

__all__ = ["EphemeralSubscription", "GroupSubscription", "Lease", "Row"]

log = logging.getLogger("eventmill.pubsub.postgres")

#: (gid, seq, lease) of one delivery row held by a consumer.
Lease = tuple[int, int, int]

#: (id, metadata, payload) of a message waiting in an ephemeral subscription.
Row = tuple[str, dict[str, str], bytes]


def _retrieve(task: asyncio.Task[float | None]) -> None:
    if not task.cancelled():
        task.exception()


class GroupSubscription(TopicGroup, AsyncCloseable):
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
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            async with self._fetch_lock:
                if self._buffer or self._closed:
                    continue
                self.wake.clear()
                task = asyncio.create_task(self._claim())
                task.add_done_callback(_retrieve)  # a cancelled waiter must not leak errors
                self._claim_task = task
                try:
                    next_visible = await asyncio.shield(task)
                except ClosedError:
                    raise StopAsyncIteration from None
                if self._buffer or self._closed:
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
            op, what="claim", deadline=None, stop=lambda: self._closed
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
        if lease is None or self._closed:
            return
        self._owner.queue_settlement(self, lease, ok)

    async def close(self) -> None:
        """Flush settlements, release unsettled messages (redelivered at once), stop."""
        if self._closed:
            return
        self._closed = True
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
        self._closed = True
        self.wake.set()
        for msg in self.inflight:
            msg._on_settle = None
        self.inflight.clear()
        self._buffer.clear()


class EphemeralSubscription(BufferedSubscription[Row]):
    """A group-less subscription: messages committed after ``subscribe`` returned.

    Fed by the bus's LISTEN connection (the NOTIFY of each publish names the seqs it
    committed). Holds at most ``ephemeral_buffer`` messages; when full the oldest is
    dropped. They wait as :data:`Row` s; a reader taking one gets a new
    :class:`Message` with its own copy of the metadata. Nack puts the message back
    at the front of this subscription only; nothing is stored server-side for it.
    """

    def __init__(self, owner: PostgresPubSub, topic: str, tid: int, limit: int) -> None:
        super().__init__(topic, None)
        self._owner = owner
        self.tid = tid
        self._limit = limit
        self.dropped = 0

    def push(self, item: Row) -> None:
        """Buffer one committed message, dropping the oldest if the buffer is full.

        ``item`` may be shared with other subscriptions: :meth:`_take` copies its
        metadata into the message it builds.
        """
        if self._closed:
            return
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning(
                    "ephemeral subscription to %r is full (%d messages): dropped %d so far",
                    self._topic,
                    self._limit,
                    self.dropped,
                )
        self._buffer.append(item)
        self._readers.wake()

    def _take(self, item: Row) -> Message:
        msg_id, metadata, payload = item
        return Message._received(msg_id, dict(metadata), payload, self._settle)

    def _settle(self, msg: Message, ok: bool) -> None:
        if not ok and not self._closed:
            self._buffer.appendleft((msg.id, dict(msg.metadata), msg.payload))
            self._readers.wake()

    async def close(self) -> None:
        self.abort()
        self._owner.forget(self)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._readers.wake_all()
