"""sqlite:/// - a durable, embedded backend on one SQLite file (WAL mode).

Publishing: ``publish`` hands its rows to the writer thread and returns once the
transaction holding them is committed (fsynced with ``synchronous=full``, the
default). Concurrent publishes are coalesced into one transaction (group commit),
so throughput grows with concurrency instead of stopping at one fsync per call.
Messages of one call are committed together, in order, or not at all.

Consuming: a consumer group has a position (``cursor``) per topic; a new group
starts at the oldest retained message. A fetched message is *leased* to the
subscription that took it; members of a group (in this or any other process)
split the messages. ``ack`` deletes the lease, ``nack`` makes the message
available again at once, ``close`` releases every lease the subscription holds.
A live subscription renews its leases every third of ``visibility_timeout``; if
its process dies, they run out and the messages are delivered again, also after
a restart. Settlements are synchronous; they are flushed in batches by the writer
(at the latest by ``close()``; :meth:`SQLiteSubscription.flush` waits for them).

Durability: transactions holding publishes use ``PRAGMA synchronous`` as
configured (``full`` by default: fsynced before ``publish`` returns); all others
(leases, acks, releases) use ``normal``, since forgetting them in an OS crash only
causes redelivery. See :attr:`SQLiteConfig.synchronous`.

A subscription without a group reads new rows of the topic from the position the
file had when ``subscribe`` returned; nothing is stored for it.

Ordering: a single consumer sees a topic's messages in publish (commit) order,
except that nacked, released or expired messages come again before newer ones.
Several processes may share the file; SQLite serialises their writes.

Retention: messages acked by every group of their topic are deleted after
``retention`` seconds (``max_age`` deletes even unacked ones); freed pages are
reused, so the file stops growing once retention keeps up.

URL: ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` with the options of
:class:`SQLiteConfig`, e.g. ``sqlite:///bus.db?synchronous=normal&visibility_timeout=5``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
import weakref
from collections import deque
from typing import Any

import orjson

from eventmill.errors import BackendUnavailableError, ClosedError, PubSubError
from eventmill.message import Message
from eventmill.pubsub._sqlite_config import SQLiteConfig
from eventmill.pubsub._sqlite_writer import (
    FETCH,
    FLUSH,
    HEAD,
    JOIN,
    PUB,
    READ,
    RELEASE,
    STOP,
    Batch,
    Fetched,
    Writer,
    WriterStats,
    is_busy,
)
from eventmill.pubsub._subscription import AsyncStartCloseable, BufferedSubscription
from eventmill.pubsub.base import Capabilities, validate_name

__all__ = ["SQLiteConfig", "SQLitePubSub", "SQLiteStats", "SQLiteSubscription"]

#: Counters of a :class:`SQLitePubSub` (``bus.stats``).
SQLiteStats = WriterStats

log = logging.getLogger("eventmill.pubsub.sqlite")

#: Open instances per database file in this process, so a publish through one
#: wakes the subscriptions of the others at once instead of at their next poll.
_INSTANCES: dict[str, weakref.WeakSet[SQLitePubSub]] = {}


class SQLiteSubscription(BufferedSubscription[tuple[int, Message]]):
    """An open subscription of :class:`SQLitePubSub` (see :class:`~eventmill.Subscription`).

    A background task, started by the first read, keeps up to ``prefetch``
    messages leased ahead of the readers and refills when half are handed out.
    """

    def __init__(self, owner: SQLitePubSub, topic: str, group: str | None, head: int) -> None:
        super().__init__(topic, group)
        self._owner = owner
        self._token = uuid.uuid4().hex
        self._after = head  # ephemeral: last seq seen
        self._held: dict[Message, int] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._error: PubSubError | None = None
        prefetch = owner.config.prefetch
        self._prefetch = prefetch
        self._refill_at = prefetch // 2

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
        backoff = poll
        while not self._closed:
            if len(self._buffer) > self._refill_at:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()
            limit = self._prefetch - len(self._buffer)
            try:
                if self._group is None:
                    rows: Fetched = await owner._call(READ, self._topic, self._after, limit)
                    if rows:
                        self._after = rows[-1][0]
                else:
                    rows = await owner._call(FETCH, self._topic, self._group, self._token, limit)
            except ClosedError:
                break
            except PubSubError as exc:
                # Another process holding the lock is transient: retry quietly.
                # Anything else is raised to the readers, then retried as well.
                log.warning("sqlite:// fetch from %r failed: %s", self._topic, exc)
                if not is_busy(exc):
                    self._error = exc
                    self._readers.wake_all()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = poll
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

    def _settle(self, msg: Message, ok: bool) -> None:
        seq = self._held.pop(msg, None)
        if seq is None or self._closed:
            return
        if self._group is not None:
            self._owner._writer_settle(ok, self._topic, self._group, seq, self._token)
        elif not ok:  # ephemeral: deliver again to this subscription
            self._buffer.appendleft((seq, msg.copy()))
            self._readers.wake()

    def _notify(self) -> None:
        self._wake.set()

    async def flush(self) -> None:
        """Wait until the settlements made so far on this subscription are committed
        (they then survive a process kill; see :attr:`SQLiteConfig.synchronous`)."""
        if not self._closed:
            await self._owner._call(FLUSH)

    async def close(self) -> None:
        """Flush settlements, release unsettled messages to the group, end iteration."""
        if self._closed:
            return
        self._closed = True
        self._readers.wake_all()
        self._room.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        for msg in self._held:
            msg._on_settle = None
        self._held.clear()
        self._buffer.clear()
        owner = self._owner
        owner._forget(self)
        if self._group is not None and not owner._abandoned:
            try:
                await owner._call(RELEASE, self._topic, self._token)
            except ClosedError:
                pass
            except PubSubError as exc:
                # Settlements stay queued for the next transaction; the leases run
                # out after visibility_timeout. Closing must not fail the caller.
                log.warning("sqlite:// could not release leases on %r: %s", self._topic, exc)

    def _abandon(self) -> None:
        """Vanish without flushing or releasing anything (a killed process)."""
        self._closed = True
        self._readers.wake_all()
        if self._pump is not None:
            self._pump.cancel()
        for msg in self._held:
            msg._on_settle = None


class SQLitePubSub(AsyncStartCloseable):
    """Durable embedded publisher and subscriber. See the module docstring."""

    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=True,
        has_server=False,
    )

    def __init__(self, config: SQLiteConfig) -> None:
        self.config = config
        self._writer: Writer | None = None
        self._starting: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, set[SQLiteSubscription]] = {}
        self._topics_ok: set[str] = set()
        self._pending = 0
        self._room: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._abandoned = False
        self._key = os.path.abspath(config.path)  # peers on the same file wake each other

    @classmethod
    def from_url(cls, url: str) -> SQLitePubSub:
        """Build from ``sqlite:///path.db?options`` (see :class:`SQLiteConfig`); no I/O."""
        return cls(SQLiteConfig.from_url(url))

    @property
    def stats(self) -> SQLiteStats:
        """Counters of the writer thread: transactions, messages committed, sweeps."""
        return self._writer.stats if self._writer is not None else SQLiteStats()

    async def start(self) -> None:
        """Open (and if needed create) the database; idempotent.

        Raises :class:`~eventmill.BackendUnavailableError` if the file cannot be
        opened, is not a database, or cannot be switched to WAL mode.
        """
        if self._closed:
            raise ClosedError("sqlite:// pubsub is closed")
        if self._starting is None:
            loop = asyncio.get_running_loop()
            c = self.config
            writer = Writer(
                path=c.path,
                synchronous=c.synchronous,
                busy_timeout=c.busy_timeout,
                visibility_ms=int(c.visibility_timeout * 1000),
                retention_ms=None if c.retention is None else int(c.retention * 1000),
                max_age_ms=None if c.max_age is None else int(c.max_age * 1000),
                sweep_interval=c.sweep_interval,
                max_batch=c.max_batch,
                loop=loop,
                on_batch=self._on_batch,
            )
            self._loop = loop
            self._starting = writer.ready
            writer.start()
            self._writer = writer
        try:
            await asyncio.shield(self._starting)
        except BackendUnavailableError:
            self._closed = True
            raise
        _INSTANCES.setdefault(self._key, weakref.WeakSet()).add(self)

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        """Commit ``messages`` to ``topic``; return once they are durable.

        Raises :class:`~eventmill.PublishError` (nothing committed) if the
        transaction fails, :class:`~eventmill.ClosedError` after ``close()``.
        """
        if self._closed:
            raise ClosedError("sqlite:// pubsub is closed")
        if topic not in self._topics_ok:
            validate_name("topic", topic)
            if len(self._topics_ok) >= 10_000:  # a cache, not a registry: keep it bounded
                self._topics_ok.clear()
            self._topics_ok.add(topic)
        rows = []
        for m in messages:
            if not isinstance(m, Message):
                raise TypeError(f"publish() takes Message objects, not {type(m).__name__}")
            md = m.metadata
            rows.append((topic, m.id, orjson.dumps(md) if md else None, m.payload))
        if not rows:
            return
        writer = self._writer
        if writer is None:
            await self.start()
            writer = self._writer
            assert writer is not None
        n = len(rows)
        while self._pending and self._pending + n > self.config.max_pending:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
            if self._closed:
                raise ClosedError("sqlite:// pubsub is closed")
        if writer.done or self._abandoned:
            raise ClosedError("sqlite:// pubsub is closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending += n
        try:
            writer.ops.put((PUB, topic, rows, fut))
            await fut
        finally:
            self._pending -= n
            if self._room:
                self._wake_room()

    def _wake_room(self) -> None:
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, *, group: str | None = None) -> SQLiteSubscription:
        """Join ``group`` on ``topic`` (created at the oldest retained message if new),
        or, without a group, follow the messages published from now on."""
        if self._closed:
            raise ClosedError("sqlite:// pubsub is closed")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if self._writer is None:
            await self.start()
        if group is None:
            head: int = await self._call(HEAD)
        else:
            await self._call(JOIN, topic, group)
            head = 0
        if self._closed:
            raise ClosedError("sqlite:// pubsub is closed")
        sub = SQLiteSubscription(self, topic, group, head)
        self._subs.setdefault(topic, set()).add(sub)
        if group is not None:
            writer = self._writer
            assert writer is not None
            writer.owners = writer.owners | {sub._token}
        return sub

    def _forget(self, sub: SQLiteSubscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.topic]
        writer = self._writer
        if writer is not None and sub._token in writer.owners:
            writer.owners = writer.owners - {sub._token}

    # -- the writer ----------------------------------------------------------------------

    async def _call(self, kind: int, *args: Any) -> Any:
        writer = self._writer
        if writer is None or self._abandoned or writer.done:
            raise ClosedError("sqlite:// pubsub is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        writer.submit((kind, *args, fut))
        return await fut

    def _writer_settle(self, ok: bool, topic: str, group: str, seq: int, token: str) -> None:
        writer = self._writer
        if writer is not None and not self._abandoned:
            writer.settle(ok, topic, group, seq, token)

    def _on_batch(self, batch: Batch) -> None:
        """Runs on the event loop after each batch: resolve futures, wake consumers."""
        for fut, value, exc in batch.results:
            if fut.done():
                continue
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)
        topics = batch.published_topics | batch.requeued_topics
        if topics:
            loop = self._loop
            for other in list(_INSTANCES.get(self._key, ())):
                if other is self or other._loop is loop:
                    other._wake_topics(topics)
                elif other._loop is not None and not other._closed:
                    with contextlib.suppress(RuntimeError):
                        other._loop.call_soon_threadsafe(other._wake_topics, topics)

    def _wake_topics(self, topics: set[str]) -> None:
        subs = self._subs
        for topic in topics:
            for sub in subs.get(topic, ()):
                sub._notify()

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every subscription (flushing settlements, releasing leases), wait for
        publishes in progress, then close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        subs = [sub for topic_subs in self._subs.values() for sub in topic_subs]
        await asyncio.gather(*(sub.close() for sub in subs))  # releases share a commit
        self._wake_room()
        writer = self._writer
        if writer is not None and writer.is_alive():
            with contextlib.suppress(ClosedError):
                await self._call(STOP)
            await asyncio.to_thread(writer.join, 30)
        self._unregister()

    async def _abandon(self) -> None:
        """Vanish as a killed process would: nothing flushed, no lease released.

        For tests (the conformance suite's ``crash``); the leases held run out
        after ``visibility_timeout`` and their messages are delivered again.
        """
        self._closed = True
        self._abandoned = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._abandon()
        self._subs.clear()
        self._wake_room()
        writer = self._writer
        if writer is not None:
            writer.abort()
            await asyncio.to_thread(writer.join, 30)
        self._unregister()

    def _unregister(self) -> None:
        peers = _INSTANCES.get(self._key)
        if peers is not None:
            peers.discard(self)
            if not peers:
                _INSTANCES.pop(self._key, None)
