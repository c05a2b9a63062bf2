"""sqlite:///: the PubSub class (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import orjson

from eventmill._sqlite import Checkpoints, connect_inline, is_locked
from eventmill.errors import BackendUnavailableError, ClosedError
from eventmill.message import Message
from eventmill.pubsub._errors import closed
from eventmill.pubsub._subscription import AsyncStartCloseable
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.sqlite._config import SQLiteConfig
from eventmill.pubsub.sqlite._errors import translate
from eventmill.pubsub.sqlite._ops import (
    Checkpoint,
    Head,
    Join,
    Op,
    Publish,
    Row,
    Stop,
    failure,
)
from eventmill.pubsub.sqlite._subscription import SQLiteSubscription
from eventmill.pubsub.sqlite._transactions import publish_in
from eventmill.pubsub.sqlite._writer import Batch, Writer, WriterStats

__all__ = ["SQLiteConfig", "SQLitePubSub", "SQLiteStats", "SQLiteSubscription"]

T = TypeVar("T")

#: Counters of a :class:`SQLitePubSub` (``bus.stats``).
SQLiteStats = WriterStats

log = logging.getLogger("eventmill.pubsub.sqlite")

#: Open instances per database file in this process, so a publish through one
#: wakes the subscriptions of the others at once instead of at their next poll.
_INSTANCES: dict[str, weakref.WeakSet[SQLitePubSub]] = {}


class SQLitePubSub(AsyncStartCloseable):
    """Durable embedded publisher and subscriber. See the module docstring."""

    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=True,
        has_server=False,
        transactions=True,
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
        self._aborted = False
        self._key = os.path.abspath(config.path)  # peers on the same file wake each other
        # Inline publishing (synchronous=normal): see _flush_inline.
        self._inline_con: sqlite3.Connection | None = None
        self._inline_on = config.synchronous == "normal"
        self._inline_queue: list[Publish] = []
        self._checkpoints = Checkpoints(self._copy_wal, contextlib.nullcontext)

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
            raise closed("sqlite://")
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

    async def publish(
        self, topic: str, *messages: Message, transaction: object | None = None
    ) -> None:
        """Commit ``messages`` to ``topic``; return once they are durable.

        Raises :class:`~eventmill.PublishError` (nothing committed) if the
        transaction fails, :class:`~eventmill.ClosedError` after ``close()``.

        With ``transaction`` (a ``sqlite3`` or ``aiosqlite`` connection, or a SQLAlchemy
        ``AsyncConnection`` or ``AsyncSession``, on the bus's database file) the messages
        are inserted in the caller's transaction instead: they commit when the caller
        commits, with its other writes, and a rollback publishes nothing. Consumers read
        them after the commit, at their next poll (``poll_interval``).
        """
        if self._closed:
            raise closed("sqlite://")
        if topic not in self._topics_ok:
            validate_name("topic", topic)
            if len(self._topics_ok) >= 10_000:  # a cache, not a registry: keep it bounded
                self._topics_ok.clear()
            self._topics_ok.add(topic)
        check_messages(messages)
        rows: list[Row] = []
        for m in messages:
            md = m.metadata
            rows.append((topic, m.id, orjson.dumps(md) if md else None, m.payload))
        if not rows:
            return
        writer = self._writer
        if writer is None:
            await self.start()
            writer = self._writer
            assert writer is not None
        if transaction is not None:
            await publish_in(transaction, self.config.path, topic, rows)
            return
        skips = writer.skips.get(topic)
        skippers: frozenset[str] = frozenset()
        if skips:
            skippers = frozenset(
                g for g, (k, v) in skips.items() if all(m.metadata.get(k) == v for m in messages)
            )
        n = len(rows)
        while self._pending and self._pending + n > self.config.max_pending:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
            if self._closed:
                raise closed("sqlite://")
        if writer.done or self._aborted:
            raise closed("sqlite://")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending += n
        try:
            pub = Publish(topic, rows, skippers, fut)
            if self._inline_on and not self._checkpoints.paused:
                if not self._inline_queue:
                    loop.call_soon(self._flush_inline)
                self._inline_queue.append(pub)
            else:
                writer.ops.put(pub)
            await fut
        finally:
            self._pending -= n
            if self._room:
                self._wake_room()

    def _flush_inline(self) -> None:
        """Commit the publishes queued during one turn of the event loop, on the
        loop's own thread (``synchronous=normal`` only: a commit then appends to the
        WAL without an fsync, cheaper than a hand-off to the writer thread and back).

        The connection never waits for a lock (busy timeout 0) and never
        checkpoints; if the file is locked (by the writer thread or another
        process) the publishes go to the writer thread, which waits up to
        ``busy_timeout``. The writer thread checkpoints the WAL every
        ``CHECKPOINT_EVERY`` commits (:class:`~eventmill._sqlite.Checkpoints`):
        while inline publishing is paused, publishes go to the writer thread.
        """
        queued, self._inline_queue = self._inline_queue, []
        writer = self._writer
        if self._aborted or writer is None or writer.done:
            for pub in queued:
                if not pub.done.done():
                    pub.done.set_exception(closed("sqlite://"))
            return
        max_batch = self.config.max_batch
        start = 0
        while start < len(queued):
            end, n = start, 0
            while end < len(queued) and (end == start or n + len(queued[end].rows) <= max_batch):
                n += len(queued[end].rows)
                end += 1
            part = queued[start:end]
            start = end
            if self._checkpoints.paused or not self._commit_inline(writer, part):
                for pub in part:
                    writer.ops.put(pub)

    def _commit_inline(self, writer: Writer, part: list[Publish]) -> bool:
        """One transaction for ``part``; ``False`` if the database was locked."""
        con = self._inline_con
        try:
            if con is None:
                con = self._inline_con = connect_inline(self.config.path)
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if is_locked(exc):
                return False
            log.warning("sqlite:// inline publishing is off: %s", exc)
            self._inline_on = False  # the writer thread takes over
            return False
        try:
            new_topics, n, skipped = writer.insert_publishes(con, part)
            con.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error: nothing of this transaction is committed
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            if is_locked(exc):
                return False
            log.warning("sqlite:// transaction failed: %s", exc)
            err = translate(part[0], exc)
            self._on_batch(Batch([failure(p.done, err) for p in part], [], set(), 0, set()))
            return True
        writer.committed(new_topics, n, inline=True)
        published = {p.topic for p in part}
        done = [p.done for p in part]
        self._on_batch(Batch([], done, published, n, set(), skipped))
        self._checkpoints.committed()
        return True

    async def _copy_wal(self, final: bool) -> bool:
        """A step of :class:`~eventmill._sqlite.Checkpoints`, run by the writer thread."""
        try:
            return await self._call(partial(Checkpoint, final))
        except ClosedError:
            return False

    def _close_inline(self) -> None:
        con, self._inline_con = self._inline_con, None
        if con is not None:
            with contextlib.suppress(sqlite3.Error):
                con.close()

    def _wake_room(self) -> None:
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, *, group: str | None = None) -> SQLiteSubscription:
        """Join ``group`` on ``topic`` (created at the oldest retained message if new),
        or, without a group, follow the messages published from now on."""
        return await self._subscribe(topic, group, None)

    async def subscribe_skipping(
        self, topic: str, *, group: str, skip: tuple[str, str]
    ) -> SQLiteSubscription:
        """The :class:`~eventmill.pubsub.base.SkippingSubscriber` capability: join
        ``group`` on ``topic``, except that messages whose metadata has ``key`` set to
        ``value`` (``skip=(key, value)``) are not delivered to the group; they count as
        acked by it at once (no lease, no hand-out). Use it for messages every member
        of the group would ack unhandled. It applies while every subscription of the
        group on the topic in this process asks for the same ``skip``."""
        validate_name("group", group)
        return await self._subscribe(topic, group, skip)

    async def _subscribe(
        self, topic: str, group: str | None, skip: tuple[str, str] | None
    ) -> SQLiteSubscription:
        if self._closed:
            raise closed("sqlite://")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if skip is not None:
            if group is None:
                raise ValueError("skip needs a consumer group")
            if not (
                isinstance(skip, tuple) and len(skip) == 2 and all(isinstance(x, str) for x in skip)
            ):
                raise TypeError("skip must be a (key, value) pair of strings")
        if self._writer is None:
            await self.start()
        if group is None:
            head = await self._call(Head)
        else:
            await self._call(partial(Join, topic, group))
            head = 0
        if self._closed:
            raise closed("sqlite://")
        sub = SQLiteSubscription(self, topic, group, head, skip)
        self._subs.setdefault(topic, set()).add(sub)
        if group is not None:
            writer = self._writer
            assert writer is not None
            writer.owners = writer.owners | {sub._token}
            self._update_skips(topic)
        return sub

    def _update_skips(self, topic: str) -> None:
        """Tell the writer which groups on ``topic`` skip which messages (those whose
        subscriptions in this process all ask for the same ``skip``)."""
        writer = self._writer
        if writer is None:
            return
        asked: dict[str, set[tuple[str, str] | None]] = {}
        for sub in self._subs.get(topic, ()):
            if sub.group is not None:
                asked.setdefault(sub.group, set()).add(sub._skip)
        groups: dict[str, tuple[str, str]] = {}
        for group, wanted in asked.items():
            only = next(iter(wanted))
            if len(wanted) == 1 and only is not None:
                groups[group] = only
        skips = dict(writer.skips)
        if groups:
            skips[topic] = groups
        else:
            skips.pop(topic, None)
        writer.skips = skips

    def _forget(self, sub: SQLiteSubscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.topic]
        if sub.group is not None:
            self._update_skips(sub.topic)
        writer = self._writer
        if writer is not None and sub._token in writer.owners:
            writer.owners = writer.owners - {sub._token}

    # -- the writer ----------------------------------------------------------------------

    async def _call(self, make: Callable[[asyncio.Future[T]], Op]) -> T:
        """Run the operation ``make(done)`` on the writer thread; return its result."""
        writer = self._writer
        if writer is None or self._aborted or writer.done:
            raise closed("sqlite://")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        writer.submit(make(done))
        return await done

    def _settle(self, ok: bool, topic: str, group: str, seq: int, owner: str) -> None:
        writer = self._writer
        if writer is not None and not self._aborted:
            writer.settle(ok, topic, group, seq, owner)

    def _on_batch(self, batch: Batch) -> None:
        """Runs on the event loop after each batch: resolve futures, wake consumers."""
        for fut in batch.committed:
            if not fut.done():
                fut.set_result(None)
        for outcome in batch.results:
            outcome()
        topics = batch.published_topics | batch.requeued_topics
        if topics:
            loop = self._loop
            for other in list(_INSTANCES.get(self._key, ())):
                if other is self:
                    # A group moved past everything published here has nothing new.
                    skipped = batch.skipped
                    if skipped and batch.requeued_topics:  # requeued: wake them all
                        skipped = frozenset(p for p in skipped if p[0] not in batch.requeued_topics)
                    other._wake_topics(topics, skipped)
                elif other._loop is loop:
                    other._wake_topics(topics)
                elif other._loop is not None and not other._closed:
                    with contextlib.suppress(RuntimeError):
                        other._loop.call_soon_threadsafe(other._wake_topics, topics)

    def _wake_topics(
        self, topics: set[str], skipped: frozenset[tuple[str, str]] | None = None
    ) -> None:
        subs = self._subs
        for topic in topics:
            for sub in subs.get(topic, ()):
                if skipped and (topic, sub.group) in skipped:
                    continue
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
        if self._inline_queue:  # publishes in progress: commit them before STOP
            self._flush_inline()
        writer = self._writer
        if writer is not None and writer.is_alive():
            with contextlib.suppress(ClosedError):
                await self._call(Stop)
            await asyncio.to_thread(writer.join, 30)
        await self._checkpoints.aclose()
        self._close_inline()
        self._unregister()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): the writer stops
        at once, nothing queued is committed; the leases held run out after
        ``visibility_timeout`` and their messages are delivered again."""
        if self._aborted:
            return
        self._closed = True
        self._aborted = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._vanish()
        self._subs.clear()
        self._wake_room()
        writer = self._writer
        if writer is not None:
            writer.abort()
            await asyncio.to_thread(writer.join, 30)
        await self._checkpoints.aclose()
        self._close_inline()
        self._unregister()

    def _unregister(self) -> None:
        peers = _INSTANCES.get(self._key)
        if peers is not None:
            peers.discard(self)
            if not peers:
                _INSTANCES.pop(self._key, None)
