"""postgresql://: the PubSub class, composed of the parts in this package.

* :class:`~eventmill.pubsub.postgres._runner.Runner`: the pools, and every statement
  run with reconnect;
* :class:`~eventmill.pubsub.postgres._publishing.GroupCommit`: publishing;
* :class:`~eventmill.pubsub.postgres._wakeups.Wakeups`: LISTEN/NOTIFY;
* :class:`~eventmill.pubsub.postgres._settlements.Settlements`: acks and nacks;
* :class:`~eventmill.pubsub.postgres._leases.Upkeep`: lease keepalive and retention.

The bus itself keeps the topics, groups and subscriptions, and is the
:class:`~eventmill.pubsub.postgres._subscriptions.Host` of its subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, TypeVar

import orjson

from eventmill.errors import ConfigurationError
from eventmill.message import Message
from eventmill.pubsub._errors import closed
from eventmill.pubsub._subscription import AsyncStartCloseable
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.factory import redact_url
from eventmill.pubsub.postgres._asyncpg import Connection, Pool, Record
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._leases import Upkeep
from eventmill.pubsub.postgres._publishing import GroupCommit
from eventmill.pubsub.postgres._runner import Runner
from eventmill.pubsub.postgres._settlements import Lease, Settlements
from eventmill.pubsub.postgres._sql import Sql
from eventmill.pubsub.postgres._subscriptions import (
    EphemeralSubscription,
    GroupSubscription,
    Snapshot,
    TopicReader,
)
from eventmill.pubsub.postgres._transactions import publish_in
from eventmill.pubsub.postgres._wakeups import Wakeups

__all__ = ["PostgresConfig", "PostgresPubSub"]

log = logging.getLogger("eventmill.pubsub.postgres")

T = TypeVar("T")


class PostgresPubSub(AsyncStartCloseable):
    """PostgreSQL publisher and subscriber. See the package docstring for semantics."""

    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=True,
        has_server=True,
        transactions=True,
    )

    def __init__(self, config: PostgresConfig | None = None) -> None:
        self.config = config or PostgresConfig()
        self.sql = Sql(self.config.schema, self.config.table_prefix)
        cfg, sql = self.config, self.sql
        self._runner = Runner(cfg, redact_url(cfg.dsn))
        self._wakeups = Wakeups(
            self._runner, sql, cfg, self._wake_local, self._local_tids, self._spawn
        )
        self._publishing = GroupCommit(self._runner, sql, cfg, self._wakeups.announce, self._spawn)
        self._settlements = Settlements(
            self._runner, sql, cfg, self._held_leases, self._wakeups.announce
        )
        # What subscriptions call per settled message, bound once (no call in between).
        self._settled = self._settlements.done
        self._acked = self._settlements.acked
        self._nacked = self._settlements.nacked
        self._upkeep = Upkeep(
            self._runner, sql, cfg, self._settlements, self._wakeups, self._held_leases
        )
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tids: dict[str, int] = {}
        self._gids: dict[tuple[int, str], int] = {}
        self._group_subs: dict[int, set[GroupSubscription]] = {}
        self._readers: dict[int, TopicReader] = {}  # tid -> reader of its ephemeral subs
        self._held_back_warned = -3600.0

    @classmethod
    def from_url(cls, url: str) -> PostgresPubSub:
        """Build from ``postgresql://...?options`` (see :class:`PostgresConfig`); no I/O."""
        return cls(PostgresConfig.from_url(url))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, create the schema if missing (idempotent), start LISTEN. Idempotent."""
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise closed("postgresql://")
            await self._runner.start(self._prepare)
            self._started = True
            self._spawn(self._settlements.loop())
            self._spawn(self._upkeep.keepalive_loop())
            self._spawn(self._wakeups.notify_loop())
            if self.config.retention is not None:
                self._spawn(self._upkeep.retention_loop(self.config.retention))

    async def _prepare(self, pool: Pool) -> None:
        """Create the schema (one process at a time), then the LISTEN connection."""
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({self.sql.lock_class}, 0)")
            await self._check_layout(conn)
            await conn.execute(self.sql.ddl)
        await self._wakeups.connect()

    async def _check_layout(self, conn: Connection) -> None:
        """Refuse tables an earlier, incompatible version created (rather than mix)."""
        sql = self.sql
        exists = await conn.fetchval("SELECT to_regclass($1)", sql.table("messages"))
        if exists is None:
            return
        if not await conn.fetchval(sql.check_layout, sql.schema, sql.messages_table):
            raise ConfigurationError(
                f"postgresql:// tables {sql.schema}.{sql.prefix}* were created by an older "
                "eventmill with another layout: drain and drop them, or choose another "
                "table_prefix"
            )

    async def close(self) -> None:
        """Wait for publishes in progress, close subscriptions (flushing acks), disconnect."""
        if self._closed:
            return
        self._closed = self._runner.closed = self._wakeups.closed = True
        await self._publishing.drain()
        with contextlib.suppress(Exception):  # wake consumers elsewhere for the last ones
            await self._wakeups.send_notifies()
        for sub in self._all_subs():
            with contextlib.suppress(Exception):
                await sub.close()
        with contextlib.suppress(Exception):
            await self._settlements.flush()
        await self._stop_tasks()
        await self._wakeups.close()
        await self._runner.close()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): every connection
        drops at once, nothing is flushed. Unflushed settlements are lost (their
        messages come back after ``visibility_timeout``); queued publishes fail."""
        if self._runner.aborted:
            return
        self._closed = self._runner.closed = self._runner.aborted = True
        for sub in self._all_subs():
            sub._vanish()
        self._group_subs.clear()
        for reader in self._readers.values():
            reader.stop()
        self._readers.clear()
        self._runner.terminate()
        self._wakeups.abort()
        self._publishing.abort()
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _all_subs(self) -> list[GroupSubscription | EphemeralSubscription]:
        subs: list[GroupSubscription | EphemeralSubscription] = []
        for gs in self._group_subs.values():
            subs.extend(gs)
        for reader in self._readers.values():
            subs.extend(reader.subs)
        return subs

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self, topic: str, *messages: Message, transaction: object | None = None
    ) -> None:
        """Commit ``messages`` to ``topic``; return once they are durable.

        With ``transaction`` (an asyncpg connection in a transaction, or a SQLAlchemy
        ``AsyncConnection`` or ``AsyncSession``, on the bus's database) the messages are
        inserted in that transaction instead: they commit when the caller commits, with
        the caller's other writes, and a rollback publishes nothing. Consumers see them
        right after the commit (a NOTIFY sent with it).
        """
        if self._closed:
            raise closed("postgresql://")
        if topic not in self._tids:
            validate_name("topic", topic)
        check_messages(messages)
        if not messages:
            return
        if not self._started:
            await self.start()
        tid = self._tids.get(topic)
        if tid is None:
            tid = await self._topic_id(topic)
        dumps = orjson.dumps
        rows = [
            (tid, m.id, dumps(m.metadata).decode() if m.metadata else "{}", m.payload)
            for m in messages
        ]
        if transaction is not None:
            await publish_in(transaction, self.sql, tid, rows)
            return
        await self._publishing.publish(tid, rows)

    # -- topics and groups --------------------------------------------------------------

    async def _topic_id(self, topic: str) -> int:
        tid = self._tids.get(topic)
        if tid is not None:
            return tid
        sql = self.sql

        async def op(conn: Connection) -> int:
            found = await conn.fetchval(sql.select_topic, topic)
            if found is None:
                found = await conn.fetchval(sql.insert_topic, topic)
            if found is None:
                found = await conn.fetchval(sql.select_topic, topic)
            return int(found)

        tid = await self._runner.run(
            op, what="topic lookup", deadline=self.config.reconnect_timeout, durable=True
        )
        self._tids[topic] = tid
        return tid

    async def _group_id(self, tid: int, group: str) -> int:
        gid = self._gids.get((tid, group))
        if gid is not None:
            return gid
        sql = self.sql

        async def op(conn: Connection) -> int:
            found = await conn.fetchval(sql.select_group, tid, group)
            if found is None:
                found = await conn.fetchval(sql.insert_group, tid, group)
            if found is None:
                found = await conn.fetchval(sql.select_group, tid, group)
            return int(found)

        gid = await self._runner.run(
            op, what="subscribe", deadline=self.config.reconnect_timeout, durable=True
        )
        self._gids[(tid, group)] = gid
        return gid

    # -- subscribing --------------------------------------------------------------------

    async def subscribe(
        self, topic: str, *, group: str | None = None
    ) -> GroupSubscription | EphemeralSubscription:
        if self._closed:
            raise closed("postgresql://")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if not self._started:
            await self.start()
        tid = await self._topic_id(topic)
        if group is None:
            # LISTEN (or a round trip on the LISTEN connection) before registering:
            # every NOTIFY of a commit that happened before this call has then been
            # read and bound to the subscriptions that existed then, not this one.
            await self._wakeups.listen(tid)
            return await self._subscribe_ephemeral(topic, tid)
        gid = await self._group_id(tid, group)
        await self._wakeups.listen(tid)
        sub = GroupSubscription(self, topic, group, tid, gid)
        self._group_subs.setdefault(tid, set()).add(sub)
        return sub

    async def _subscribe_ephemeral(self, topic: str, tid: int) -> EphemeralSubscription:
        reader = self._readers.get(tid)
        if reader is None:
            reader = self._readers[tid] = TopicReader(self, topic, tid)
            reader.start()
        # Counted as joining, the reader is not stopped if its last subscription leaves
        # meanwhile. No read runs while the snapshot is taken and the subscription
        # joins: a read that ran before saw only what committed before the snapshot.
        reader.joining += 1
        try:
            async with reader.lock:
                since = await self._snapshot()
                eph = EphemeralSubscription(self, topic, tid, self.config.ephemeral_buffer, since)
                reader.join(eph)
        finally:
            reader.joining -= 1
            if not reader.subs and not reader.joining and not reader.stopped:
                reader.stop()  # the snapshot failed and nobody else uses it
                if self._readers.get(tid) is reader:
                    del self._readers[tid]
        return eph

    async def _snapshot(self) -> Snapshot:
        async def op(conn: Connection) -> Snapshot:
            row = await conn.fetchrow(self.sql.snapshot)
            assert row is not None
            xmin, xmax, running = row
            return Snapshot(xmin, xmax, frozenset(running))

        return await self._runner.run(op, what="subscribe", deadline=self.config.reconnect_timeout)

    def _wake_local(self, tid: int) -> None:
        for sub in self._group_subs.get(tid, ()):
            sub.wake.set()
        reader = self._readers.get(tid)
        if reader is not None:
            reader.wake.set()

    def _local_tids(self) -> Iterable[int]:
        return {*self._group_subs, *self._readers}

    def _held_leases(self) -> Iterator[Lease]:
        """The leases every group subscription of this bus holds."""
        for subs in self._group_subs.values():
            for sub in subs:
                yield from sub.held.values()

    # -- settlements and retention ------------------------------------------------------

    async def flush_settlements(self) -> None:
        """Write every ack and nack made so far (returns when they are committed).

        A batch fully settled is deleted, nacked messages move to leases of their own,
        and the acks of batches still in progress are added to their leases. If the
        server stays unreachable for ``reconnect_timeout`` the writes are dropped (with
        a warning): the messages are then delivered again (at-least-once).
        """
        await self._settlements.flush()

    async def run_retention(self) -> int:
        """Run one retention pass now; return how many messages were deleted."""
        return await self._upkeep.run_retention()

    # -- the Host of the subscriptions (private by convention) --------------------------

    async def _run(
        self,
        op: Callable[[Connection], Awaitable[T]],
        *,
        what: str,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
    ) -> T:
        return await self._runner.run(op, what=what, deadline=deadline, stop=stop)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget(self, sub: GroupSubscription | EphemeralSubscription) -> None:
        if isinstance(sub, GroupSubscription):
            self._group_subs.get(sub.tid, set()).discard(sub)
        else:
            reader = self._readers.get(sub.tid)
            if reader is not None:
                reader.subs.discard(sub)
                if not reader.subs and not reader.joining:
                    reader.stop()
                    del self._readers[sub.tid]

    def _warn_held_back(self, topic: str, group: str | None, blocker: Record | None) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._held_back_warned < 60:
            return
        self._held_back_warned = now
        if blocker is None:
            who = "an open transaction"
        else:
            pid, age, state = blocker
            who = f"the transaction of backend pid {pid} (open {age or 0:.0f} s, {state})"
        log.warning(
            "postgresql:// delivery of topic %r to group %r is held back by %s: messages "
            "committed after it began wait until it ends",
            topic,
            group,
            who,
        )

    async def _flush_settlements(self) -> None:
        await self._settlements.flush()

    async def _release(self, leases: list[Lease], tid: int) -> None:
        await self._settlements.release(leases, tid)
