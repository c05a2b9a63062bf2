"""Subscriptions of the postgresql:// backend (group and ephemeral).

They reach the bus only through :class:`Host`, the internal interface its
:class:`~eventmill.pubsub.postgres.PostgresPubSub` implements; its members are
private by convention (the bus's public API is the PubSub contract).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import orjson

from eventmill.errors import ClosedError, PubSubError
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._subscription import (
    AsyncCloseable,
    BufferedSubscription,
    TopicGroup,
    Unsettled,
)
from eventmill.pubsub.postgres._asyncpg import Connection, Record
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._settlements import Lease
from eventmill.pubsub.postgres._sql import Sql

__all__ = [
    "EphemeralSubscription",
    "GroupSubscription",
    "Host",
    "Row",
    "Snapshot",
    "TopicReader",
]

log = logging.getLogger("eventmill.pubsub.postgres")

T = TypeVar("T")


class Host(Protocol):
    """What the subscriptions need of their bus (private by convention)."""

    @property
    def config(self) -> PostgresConfig: ...

    @property
    def sql(self) -> Sql: ...

    async def _run(
        self,
        op: Callable[[Connection], Awaitable[T]],
        *,
        what: str,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
    ) -> T:
        """Run ``op`` on a consuming connection, with reconnect (``Runner.run``)."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task of the bus (cancelled when it closes)."""

    def _forget(self, sub: GroupSubscription | EphemeralSubscription) -> None:
        """Unregister a closed (or aborted) subscription."""

    def _warn_held_back(self, topic: str, group: str | None, blocker: Record | None) -> None:
        """Log (once a minute) that delivery waits behind an open transaction."""

    def _settled(self, lease: Lease) -> None:
        """Every message of ``lease`` is settled (``Settlements.done``)."""

    def _acked(self) -> None:
        """An ack of a batch in progress waits to be written (``Settlements.acked``)."""

    def _nacked(self, tid: int, lease: Lease, txid: int, seq: int) -> None:
        """A message was nacked (``Settlements.nacked``)."""

    async def _flush_settlements(self) -> None:
        """Write every settlement made so far (``Settlements.flush``)."""

    async def _release(self, leases: list[Lease], tid: int) -> None:
        """Make the unsettled messages of ``leases`` claimable again (``Settlements.release``)."""


#: (id, metadata, payload) of a message waiting in an ephemeral subscription.
Row = tuple[str, dict[str, str], bytes]


_HELD_BACK_MIN = 0.01  # first re-look when messages wait behind an open transaction
_HELD_BACK_MAX = 0.25  # backoff cap of those re-looks
_HELD_BACK_WARN = 10.0  # seconds held back before a warning names the blocking backend
_EPHEMERAL_FETCH = 1000  # messages per read of a topic reader


def _retrieve(task: asyncio.Task[float | None]) -> None:
    if not task.cancelled():
        task.exception()


class GroupSubscription(TopicGroup, AsyncCloseable):
    """One member of a consumer group.

    Claims a batch of up to ``prefetch`` messages at a time (one lease, for
    ``visibility_timeout``; no more than ``max_unsettled`` leaves room for), hands
    them out in commit order, and sleeps when there
    is no work until a NOTIFY for its topic, a lease expiring, or ``poll_interval``
    wakes it (or, while committed messages wait behind an open transaction, a short
    backoff). Leases it holds are renewed while it is open; ``close()`` flushes
    settlements and releases what it still holds.
    """

    def __init__(self, owner: Host, topic: str, group: str, tid: int, gid: int) -> None:
        self._owner = owner
        self._topic = topic
        self._group = group
        self.tid = tid
        self.gid = gid
        self._buffer: deque[Message] = deque()
        self.inflight: dict[Message, tuple[Lease, int, int]] = {}  # -> (lease, txid, seq)
        self.held: dict[int, Lease] = {}  # lid -> lease with messages not yet settled
        self.wake = asyncio.Event()
        self._held_back_since: float | None = None
        self._backoff = Backoff(_HELD_BACK_MAX, _HELD_BACK_MIN)
        self._linger_until = 0.0  # loop time before which the next claim waits
        self._fetch_lock = asyncio.Lock()
        self._claim_task: asyncio.Task[float | None] | None = None
        self._closed = False
        cfg = owner.config
        what = f"postgresql:// subscription to {topic!r} (group {group!r})"
        self._limit = Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        limit = self._limit
        while True:
            if self._closed:
                raise StopAsyncIteration
            if limit.count >= limit.cap:  # limit.full, without a property call per message
                await limit.wait()
                continue
            if self._buffer:
                limit.count += 1
                return self._buffer.popleft()
            async with self._fetch_lock:
                if self._buffer or self._closed:
                    continue
                linger = self._linger_until - asyncio.get_running_loop().time()
                if linger > 0:  # a stream: let the next batch gather a little
                    await asyncio.sleep(linger)
                    if self._closed:
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
        """Lease a batch into the buffer; if none, return seconds until it is worth
        looking again (a lease expiring, or messages held back by an open transaction)."""
        owner = self._owner
        cfg = owner.config
        sql = owner.sql

        want = cfg.prefetch
        if cfg.max_unsettled is not None:  # the room the bound leaves (at least 1 here)
            want = max(1, min(want, cfg.max_unsettled - self._limit.count - len(self._buffer)))

        async def op(conn: Connection) -> tuple[list[Record], float | None, bool]:
            rows = await conn.fetch(sql.claim, self.gid, self.tid, want, cfg.visibility_timeout)
            if rows:
                return rows, None, False
            state = await conn.fetchrow(sql.idle_state, self.gid)
            assert state is not None  # an aggregate: always one row
            next_visible, held_back = state
            if held_back and self._held_back_too_long():
                blocker = await conn.fetchrow(sql.oldest_writer)
                owner._warn_held_back(self._topic, self._group, blocker)
            return rows, next_visible, held_back

        rows, next_visible, held_back = await owner._run(
            op, what="claim", deadline=None, stop=lambda: self._closed
        )
        if not rows:
            if not held_back:
                self._held_back_since = None
                self._backoff.reset()
                return next_visible
            # Committed messages wait behind an older transaction still open (see the
            # module docstring of postgres._sql): look again soon, backing off.
            wait = self._backoff.next()
            return wait if next_visible is None else min(wait, next_visible)
        self._held_back_since = None
        self._backoff.reset()
        if len(rows) < want:
            self._linger_until = asyncio.get_running_loop().time() + cfg.claim_linger
        lid, counter = rows[0][0], rows[0][1]
        lease = Lease(lid, counter, len(rows))
        self.held[lid] = lease
        settle, inflight, buffer = self._settle, self.inflight, self._buffer
        loads, received = orjson.loads, Message._received
        for _, _, txid, seq, msg_id, metadata, payload in rows:
            msg = received(msg_id, loads(metadata) if metadata != "{}" else {}, payload, settle)
            inflight[msg] = (lease, txid, seq)
            buffer.append(msg)
        return None

    def _held_back_too_long(self) -> bool:
        now = asyncio.get_running_loop().time()
        if self._held_back_since is None:
            self._held_back_since = now
            return False
        return now - self._held_back_since >= _HELD_BACK_WARN

    def _settle(self, msg: Message, ok: bool) -> bool:
        entry = self.inflight.pop(msg, None)
        if entry is None or self._closed:
            return False
        self._limit.done()
        lease, txid, seq = entry
        lease.open -= 1
        if ok:
            if not lease.acked:
                lease.acked_at = time.monotonic()
            lease.acked.append(seq)
        else:
            self._owner._nacked(self.tid, lease, txid, seq)
        if lease.open == 0:
            del self.held[lease.lid]
            self._owner._settled(lease)
        elif ok:
            self._owner._acked()
        return True

    async def close(self) -> None:
        """Flush settlements, release unsettled messages (redelivered at once), stop."""
        if self._closed:
            return
        self._closed = True
        self.wake.set()
        self._limit.close()
        task = self._claim_task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=5)
            if not done:
                task.cancel()
        self._owner._forget(self)
        await self._owner._flush_settlements()
        held = list(self.held.values())
        self.held.clear()
        for msg in self.inflight:
            msg._release()
        self.inflight.clear()
        self._buffer.clear()
        if held:
            await self._owner._release(held, self.tid)

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
        self.wake.set()
        self._limit.close()
        for msg in self.inflight:
            msg._release()
        self.inflight.clear()
        self.held.clear()
        self._buffer.clear()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A server snapshot: which transactions had committed when it was taken."""

    xmin: int
    xmax: int
    running: frozenset[int]

    def sees(self, txid: int) -> bool:
        """Whether transaction ``txid`` had ended (committed) before the snapshot."""
        if txid < self.xmin:
            return True
        if txid >= self.xmax:
            return False
        return txid not in self.running


class TopicReader:
    """Reads one topic's log, in commit order, for this process's ephemeral subscriptions.

    An in-memory cursor (nothing stored server-side) that follows the same horizon
    as group claims; woken by local publishes and NOTIFYs, and while messages wait
    behind an open transaction, by a short backoff. Each subscription keeps only
    messages its subscribe-time :class:`Snapshot` did not see committed.
    """

    def __init__(self, owner: Host, topic: str, tid: int) -> None:
        self._owner = owner
        self._topic = topic
        self.tid = tid
        self.subs: set[EphemeralSubscription] = set()
        self.lock = asyncio.Lock()  # a fetch, or a subscription joining
        self.wake = asyncio.Event()
        self._cursor: tuple[int, int] | None = None  # set by the first join
        self._task: asyncio.Task[None] | None = None
        self.joining = 0  # subscriptions between "found this reader" and joining it
        self.stopped = False

    def join(self, sub: EphemeralSubscription) -> None:
        """Add ``sub`` (call holding :attr:`lock`); the first one places the cursor at
        its snapshot's horizon (nothing below it committed after the snapshot)."""
        if self._cursor is None:
            self._cursor = (sub.since.xmin, 0)
        self.subs.add(sub)

    def start(self) -> None:
        self._task = self._owner._spawn(self._run())

    def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        owner = self._owner
        backoff = Backoff(_HELD_BACK_MAX, _HELD_BACK_MIN)
        timeout = owner.config.poll_interval
        while True:
            timer = asyncio.get_running_loop().call_later(timeout, self.wake.set)
            try:
                await self.wake.wait()
            finally:
                timer.cancel()
            self.wake.clear()
            try:
                held_back = await owner._run(
                    self._fetch, what="ephemeral read", deadline=None, stop=lambda: self.stopped
                )
            except ClosedError:
                return
            except PubSubError as exc:  # not transient: say so, and try again later
                log.warning("postgresql:// reading topic %r failed: %s", self._topic, exc)
                held_back = False
            if held_back:
                timeout = backoff.next()
            else:
                timeout = owner.config.poll_interval
                backoff.reset()

    async def _fetch(self, conn: Connection) -> bool:
        """Hand every message past the cursor to the subscriptions; True when
        committed messages wait behind the horizon."""
        sql = self._owner.sql
        limit = _EPHEMERAL_FETCH
        async with self.lock:
            if self._cursor is None:
                return False  # no subscription joined yet
            while True:
                rows = await conn.fetch(sql.read_after, self.tid, *self._cursor, limit)
                if rows:
                    subs = tuple(self.subs)
                    loads = orjson.loads
                    for txid, _, msg_id, metadata, payload in rows:
                        targets = [sub for sub in subs if not sub.since.sees(txid)]
                        if targets:
                            item = (msg_id, loads(metadata), payload)
                            for sub in targets:
                                sub.push(item)
                    last = rows[-1]
                    self._cursor = (last[0], last[1])
                if len(rows) < limit:
                    break
            held: bool = await conn.fetchval(sql.exists_after, self.tid, *self._cursor)
            return held


class EphemeralSubscription(BufferedSubscription[Row]):
    """A group-less subscription: messages committed after ``subscribe`` returned.

    Fed by the process's :class:`TopicReader` of the topic (in commit order; a
    LISTEN connection going down only delays it). Holds at most ``ephemeral_buffer``
    messages; when full the oldest is dropped. They wait as :data:`Row` s; a reader
    taking one gets a new :class:`Message` with its own copy of the metadata. Nack
    puts the message back at the front of this subscription only; nothing is stored
    server-side for it.
    """

    def __init__(self, owner: Host, topic: str, tid: int, limit: int, since: Snapshot) -> None:
        cfg = owner.config
        what = f"postgresql:// subscription to {topic!r}"
        super().__init__(topic, None, Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what))
        self._owner = owner
        self.tid = tid
        self.since = since
        self._capacity = limit
        self.dropped = 0

    def push(self, item: Row) -> None:
        """Buffer one committed message, dropping the oldest if the buffer is full.

        ``item`` may be shared with other subscriptions: :meth:`_take` copies its
        metadata into the message it builds.
        """
        if self._closed:
            return
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning(
                    "ephemeral subscription to %r is full (%d messages): dropped %d so far",
                    self._topic,
                    self._capacity,
                    self.dropped,
                )
        self._buffer.append(item)
        self._readers.wake()

    def _take(self, item: Row) -> Message:
        msg_id, metadata, payload = item
        return Message._received(msg_id, dict(metadata), payload, self._settle)

    def _settle(self, msg: Message, ok: bool) -> None:
        if self._closed:
            return
        self._limit.done()
        if not ok:
            self._buffer.appendleft((msg.id, dict(msg.metadata), msg.payload))
            self._readers.wake()

    async def close(self) -> None:
        """Drop what is buffered (nothing is kept for it server-side), end iteration."""
        self._vanish()
        self._owner._forget(self)

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): as :meth:`close`."""
        await self.close()

    def _vanish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._readers.wake_all()
        self._limit.close()
