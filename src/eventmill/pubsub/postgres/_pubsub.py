"""postgresql://: the PubSub class (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from eventmill.errors import (
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    PubSubError,
)
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed
from eventmill.pubsub._subscription import AsyncStartCloseable
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.factory import redact_url
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._errors import is_transient, mapped
from eventmill.pubsub.postgres._sql import Sql
from eventmill.pubsub.postgres._subscriptions import (
    EphemeralSubscription,
    GroupSubscription,
    Lease,
    Snapshot,
    TopicReader,
)

__all__ = ["PostgresConfig", "PostgresPubSub"]

log = logging.getLogger("eventmill.pubsub.postgres")

T = TypeVar("T")

_NOTIFY_WINDOW = 0.005  # at most one NOTIFY per topic this often (seconds)
_PARTIAL_AFTER = 0.05  # acks of a batch in progress are written once this old (seconds)
_RETENTION_CHUNK = 5000
_COPY_MIN = 8  # publish batches this large use COPY, smaller ones one INSERT (see _insert)

#: Session settings of the consuming pool. Claims, acks, nacks and lease renewals
#: only ever risk a redelivery if lost in a server crash, so their commits need not
#: wait for the WAL flush. Every statement it runs is built for an index (a queue
#: table's statistics are always stale: a scan+sort plan chosen for "49 rows" on a
#: 100,000-row backlog is 10x slower), so the planner is kept on indexes; and JIT
#: compilation, which the retention pass's estimates trigger, costs ~300 ms for a
#: statement that runs in ~1 ms.
_CONSUMER_SETTINGS = {
    "synchronous_commit": "off",
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
    "jit": "off",
}


@dataclass(slots=True)
class LeaseUpdate:
    """Leases to renew (or release) with the acks of each not yet written."""

    leases: list[Lease]
    taken: list[list[int]]
    lids: list[int]
    counters: list[int]
    ack_lids: list[int]
    seqs: list[int]

    @classmethod
    def take(cls, leases: Iterable[Lease]) -> LeaseUpdate:
        """Take the pending acks out of ``leases`` (see :meth:`restore`)."""
        held = list(leases)
        taken = []
        ack_lids: list[int] = []
        seqs: list[int] = []
        for lease in held:
            acked, lease.acked = lease.acked, []
            taken.append(acked)
            ack_lids.extend(itertools.repeat(lease.lid, len(acked)))
            seqs.extend(acked)
        lids = [lease.lid for lease in held]
        return cls(held, taken, lids, [lease.counter for lease in held], ack_lids, seqs)

    def restore(self) -> None:
        """Put the taken acks back (the write did not happen)."""
        for lease, acked in zip(self.leases, self.taken, strict=True):
            lease.acked[:0] = acked

    async def execute(self, conn: Any, sql: Sql, seconds: float) -> None:
        await conn.execute(
            sql.update_leases, self.lids, self.counters, self.ack_lids, self.seqs, seconds
        )


@dataclass(slots=True)
class _Pending:
    """One publish call waiting for its group commit."""

    tid: int
    rows: list[tuple[int, str, str, bytes]]
    fut: asyncio.Future[None]


class _Held:
    """A pool connection a long-running task keeps between its statements.

    asyncpg's pool costs ~55 µs of CPU per acquire and release, as much as the
    client side of a 50-row ``COPY``; a publish worker commits batch after batch, so
    it keeps one connection while it runs (see :meth:`PostgresPubSub.run`) and gives
    it back when it stops or the connection fails. Workers keep connections only
    while ``publish_workers < pool_max``, so topic and group creation always find one.
    """

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: Any = None
        self.pool: Any = None

    async def give_back(self, *, broken: bool = False) -> None:
        """Return the connection to its pool (closed first if ``broken``)."""
        conn, pool, self.conn, self.pool = self.conn, self.pool, None, None
        if conn is not None:
            await _release(pool, conn, broken=broken)


async def _release(pool: Any, conn: Any, *, broken: bool) -> None:
    """Return ``conn`` to ``pool``; a ``broken`` one (its statement failed with a
    connection error) is closed first, so nobody gets it half-way through a protocol
    exchange: the pool's cheap reset (:func:`_reset`) does not test the connection."""
    # Either call fails once the connection's loss was seen: asyncpg has then
    # closed it and returned it to the pool itself.
    with contextlib.suppress(Exception):
        if broken:
            conn.terminate()
        await pool.release(conn)


async def _reset(conn: Any) -> None:
    """Pool reset: roll back a transaction left open by an error (cheaper than RESET ALL)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PostgresPubSub(AsyncStartCloseable):
    """PostgreSQL publisher and subscriber. See the module docstring for semantics."""

    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=True,
        has_server=True,
    )

    def __init__(self, config: PostgresConfig | None = None) -> None:
        self.config = config or PostgresConfig()
        self.sql = Sql(self.config.schema, self.config.table_prefix)
        self._where = redact_url(self.config.dsn)
        self._pool: Any = None  # publishing, topics, groups: durable commits
        self._cpool: Any = None  # consuming: synchronous_commit=off (see start())
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._aborted = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # topics and groups
        self._tids: dict[str, int] = {}
        self._gids: dict[tuple[int, str], int] = {}
        self._group_subs: dict[int, set[GroupSubscription]] = {}
        self._readers: dict[int, TopicReader] = {}  # tid -> reader of its ephemeral subs
        # group commit
        self._pending: deque[_Pending] = deque()
        self._pending_count = 0
        self._publishers: set[asyncio.Task[None]] = set()  # group-commit workers
        self._space: deque[asyncio.Future[None]] = deque()
        self._workers = 0
        self._collecting = False  # a worker is about to take a batch (see _publish_worker)
        # settlements
        self._done: list[Lease] = []
        self._nacks: list[tuple[Lease, int, int]] = []  # (lease, txid, seq)
        self._nack_tids: set[int] = set()
        self._held_back_warned = -3600.0
        self._settle_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        # LISTEN/NOTIFY
        self._listen_conn: Any = None
        self._listen_ready = asyncio.Event()
        self._listen_lock = asyncio.Lock()
        self._channels: dict[str, int] = {}
        self._relisten_task: asyncio.Task[None] | None = None
        self._token = uuid.uuid4().hex[:12]  # marks this bus's own NOTIFYs
        self._notify_tids: set[int] = set()
        self._notify_wake = asyncio.Event()

    @classmethod
    def from_url(cls, url: str) -> PostgresPubSub:
        """Build from ``postgresql://...?options`` (see :class:`PostgresConfig`); no I/O."""
        return cls(PostgresConfig.from_url(url))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, create the schema if missing (idempotent), start LISTEN. Idempotent."""
        async with self._start_lock:
            if self._pool is not None:
                return
            if self._closed:
                raise closed("postgresql://")
            cfg = self.config
            loop = asyncio.get_running_loop()
            end = loop.time() + cfg.connect_timeout
            backoff = Backoff(cfg.reconnect_max_delay)
            while True:
                pools: list[Any] = []
                try:
                    with mapped("start", self._where):
                        pool = await asyncpg.create_pool(
                            cfg.dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, reset=_reset
                        )
                        pools.append(pool)
                        cpool = await asyncpg.create_pool(
                            cfg.dsn,
                            min_size=cfg.pool_min,
                            max_size=cfg.pool_max,
                            reset=_reset,
                            server_settings=_CONSUMER_SETTINGS,
                        )
                        pools.append(cpool)
                        async with pool.acquire() as conn, conn.transaction():
                            await conn.execute(
                                f"SELECT pg_advisory_xact_lock({self.sql.lock_class}, 0)"
                            )
                            await self._check_layout(conn)
                            await conn.execute(self.sql.ddl)
                        await self._connect_listener()
                        break
                except Exception as exc:
                    for p in pools:
                        p.terminate()
                    if not is_transient(exc):
                        raise
                    delay = backoff.next()
                    if loop.time() + delay > end:
                        raise BackendUnavailableError(
                            f"postgresql server {self._where} unreachable "
                            f"({type(exc).__name__}: {exc})"
                        ) from exc
                    await asyncio.sleep(delay)
            self._pool, self._cpool = pool, cpool
            self._spawn(self._settle_loop())
            self._spawn(self._keepalive_loop())
            self._spawn(self._notify_loop())
            if cfg.retention is not None:
                self._spawn(self._retention_loop(cfg.retention))

    async def _check_layout(self, conn: Any) -> None:
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

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Wait for publishes in progress, close subscriptions (flushing acks), disconnect."""
        if self._closed:
            return
        self._closed = True
        for fut in self._space:
            if not fut.done():
                fut.set_result(None)
        while self._publishers:  # they exit once every queued call is committed
            await asyncio.wait(list(self._publishers))
        with contextlib.suppress(Exception):  # wake consumers elsewhere for the last ones
            await self._send_notifies()
        for sub in self._all_subs():
            with contextlib.suppress(Exception):
                await sub.close()
        with contextlib.suppress(Exception):
            await self.flush_settlements()
        await self._stop_tasks()
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()
        for pool in (self._pool, self._cpool):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 5)
                except Exception:
                    pool.terminate()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): every connection
        drops at once, nothing is flushed. Unflushed settlements are lost (their
        messages come back after ``visibility_timeout``); queued publishes fail."""
        if self._aborted:
            return
        self._closed = self._aborted = True
        for sub in self._all_subs():
            sub._vanish()
        self._group_subs.clear()
        for reader in self._readers.values():
            reader.stop()
        self._readers.clear()
        for pool in (self._pool, self._cpool):
            if pool is not None:
                pool.terminate()
        if self._listen_conn is not None:
            self._listen_conn.terminate()
            self._listen_conn = None
        while self._pending:
            item = self._pending.popleft()
            if not item.fut.done():
                item.fut.set_exception(closed("postgresql://"))
        for fut in self._space:
            if not fut.done():
                fut.set_result(None)
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

    def forget(self, sub: GroupSubscription | EphemeralSubscription) -> None:
        """Unregister a closed subscription (called by the subscription)."""
        if isinstance(sub, GroupSubscription):
            self._group_subs.get(sub.tid, set()).discard(sub)
        else:
            reader = self._readers.get(sub.tid)
            if reader is not None:
                reader.subs.discard(sub)
                if not reader.subs and not reader.joining:
                    reader.stop()
                    del self._readers[sub.tid]

    # -- running statements with reconnect ----------------------------------------------

    async def run(
        self,
        op: Callable[[Any], Awaitable[T]],
        *,
        what: str,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
        durable: bool = False,
        held: _Held | None = None,
    ) -> T:
        """Run ``op(connection)``, retrying connection failures with capped backoff.

        ``durable`` ops (publish, topic and group creation) run on the pool whose
        commits wait for the WAL flush; the others on the ``synchronous_commit=off`` one.
        With ``held``, the connection it keeps is used (one is acquired if it has
        none); after a failure it is given back and the next try acquires another.

        Gives up after ``deadline`` seconds (``None``: while the bus is open, or until
        ``stop()``), raising :class:`BackendUnavailableError`; raises
        :class:`ClosedError` once aborted or stopped, and translates other errors.
        """
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        backoff = Backoff(self.config.reconnect_max_delay)
        warned = False
        while True:
            if self._aborted or (stop is not None and stop()):
                raise closed("postgresql://")
            if end is None and self._closed:
                raise closed("postgresql://")
            pool = self._pool if durable else self._cpool
            conn: Any = None
            try:
                with mapped(what, self._where):  # non-transient errors become eventmill's
                    if held is None:
                        conn = await pool.acquire()
                    elif held.conn is None:
                        held.conn, held.pool = await pool.acquire(), pool
                    result = await op(conn if held is None else held.conn)
            except Exception as exc:
                broken = is_transient(exc)
                if held is not None:
                    await held.give_back(broken=broken)
                elif conn is not None:
                    await _release(pool, conn, broken=broken)
                    conn = None
                if self._aborted:
                    raise closed("postgresql://") from exc
                if not broken:
                    raise
                delay = backoff.next()
                if end is not None and loop.time() + delay > end:
                    raise BackendUnavailableError(
                        f"postgresql:// {what} gave up: server {self._where} unreachable "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                if not warned:
                    warned = True
                    log.warning(
                        "postgresql:// %s: server %s unreachable (%s); retrying",
                        what,
                        self._where,
                        type(exc).__name__,
                    )
                await asyncio.sleep(delay)
            except BaseException:  # cancelled: the pool waits for the server to cancel
                if conn is not None:
                    await _release(pool, conn, broken=False)
                raise
            else:
                if conn is not None:  # a failed release must not fail what was done
                    await _release(pool, conn, broken=False)
                return result

    # -- topics and groups --------------------------------------------------------------

    async def _topic_id(self, topic: str) -> int:
        tid = self._tids.get(topic)
        if tid is not None:
            return tid
        sql = self.sql

        async def op(conn: Any) -> int:
            found = await conn.fetchval(sql.select_topic, topic)
            if found is None:
                found = await conn.fetchval(sql.insert_topic, topic)
            if found is None:
                found = await conn.fetchval(sql.select_topic, topic)
            return int(found)

        tid = await self.run(
            op, what="topic lookup", deadline=self.config.reconnect_timeout, durable=True
        )
        self._tids[topic] = tid
        return tid

    async def _group_id(self, tid: int, group: str) -> int:
        gid = self._gids.get((tid, group))
        if gid is not None:
            return gid
        sql = self.sql

        async def op(conn: Any) -> int:
            found = await conn.fetchval(sql.select_group, tid, group)
            if found is None:
                found = await conn.fetchval(sql.insert_group, tid, group)
            if found is None:
                found = await conn.fetchval(sql.select_group, tid, group)
            return int(found)

        gid = await self.run(
            op, what="subscribe", deadline=self.config.reconnect_timeout, durable=True
        )
        self._gids[(tid, group)] = gid
        return gid

    # -- publish (group commit) ---------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        if self._closed:
            raise closed("postgresql://")
        if topic not in self._tids:
            validate_name("topic", topic)
        check_messages(messages)
        if not messages:
            return
        if self._pool is None:
            await self.start()
        tid = self._tids.get(topic)
        if tid is None:
            tid = await self._topic_id(topic)
        dumps = orjson.dumps
        rows = [
            (tid, m.id, dumps(m.metadata).decode() if m.metadata else "{}", m.payload)
            for m in messages
        ]
        n = len(rows)
        loop = asyncio.get_running_loop()
        while self._pending_count and self._pending_count + n > self.config.max_pending:
            wait: asyncio.Future[None] = loop.create_future()
            self._space.append(wait)
            await wait
            if self._closed:
                raise closed("postgresql://")
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Pending(tid, rows, fut))
        self._pending_count += n
        if not self._collecting and self._workers < self.config.publish_workers:
            self._start_worker()
        await fut  # if the caller is cancelled, the messages may still be committed

    def _start_worker(self) -> None:
        self._workers += 1
        self._collecting = True
        task = self._spawn(self._publish_worker())
        self._publishers.add(task)
        task.add_done_callback(self._publishers.discard)

    async def _publish_worker(self) -> None:
        """Commit pending calls, batch after batch, until none are left.

        At most one worker is *collecting* (between waking and taking its batch) at a
        time, so concurrent calls gather into its batch instead of starting workers.
        """
        cfg = self.config
        # Keep a connection only if that leaves one for topic and group creation.
        held = _Held() if cfg.publish_workers < cfg.pool_max else None
        try:
            while self._pending and not self._aborted:
                # Publishers woken by the last commit queue their next call first.
                self._collecting = True
                await asyncio.sleep(0)
                self._collecting = False
                # With a worker slot free, take half the calls and hand the rest to a
                # second transaction: one commits while the other's publishers run.
                calls = len(self._pending)
                if calls > 1 and self._workers < cfg.publish_workers:
                    calls = (calls + 1) // 2
                batch: list[_Pending] = []
                count = 0
                while self._pending and (
                    not batch
                    or (
                        len(batch) < calls
                        and count + len(self._pending[0].rows) <= cfg.publish_batch
                    )
                ):
                    item = self._pending.popleft()
                    batch.append(item)
                    count += len(item.rows)
                if not batch:  # another worker took everything
                    break
                self._pending_count -= count
                if self._pending and self._workers < cfg.publish_workers:
                    self._start_worker()
                while self._space:
                    waiter = self._space.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
                try:
                    await self.run(
                        functools.partial(self._insert, batch),
                        what="publish",
                        deadline=cfg.reconnect_timeout,
                        durable=True,
                        held=held,
                    )
                except Exception as exc:
                    for item in batch:
                        if not item.fut.done():
                            item.fut.set_exception(exc)
                            item.fut.exception()  # mark retrieved; the caller re-raises it
                else:
                    for item in batch:
                        if not item.fut.done():
                            item.fut.set_result(None)
                    self._announce({item.tid for item in batch})
        finally:
            self._workers -= 1
            if held is not None:
                await held.give_back()

    async def _insert(self, batch: list[_Pending], conn: Any) -> None:
        """One statement, committed on its own (the caller then wakes consumers).

        A binary ``COPY`` (which numbers the rows in record order): asyncpg encodes
        its records at about half the CPU of four arrays. Below ``_COPY_MIN`` rows,
        one ``INSERT`` instead: one answer to wait for where ``COPY`` sends two,
        which is what a lone publisher waits for.
        """
        sql = self.sql
        if sum(len(item.rows) for item in batch) < _COPY_MIN:
            rows = [row for item in batch for row in item.rows]
            tids, ids, metas, payloads = (list(col) for col in zip(*rows, strict=True))
            await conn.execute(sql.publish, tids, ids, metas, payloads)
            return
        await conn.copy_records_to_table(
            sql.messages_table,
            schema_name=sql.schema,
            columns=sql.copy_columns,
            records=itertools.chain.from_iterable(item.rows for item in batch),
        )

    # -- subscribe ----------------------------------------------------------------------

    async def subscribe(
        self, topic: str, *, group: str | None = None
    ) -> GroupSubscription | EphemeralSubscription:
        if self._closed:
            raise closed("postgresql://")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if self._pool is None:
            await self.start()
        tid = await self._topic_id(topic)
        if group is None:
            # LISTEN (or a round trip on the LISTEN connection) before registering:
            # every NOTIFY of a commit that happened before this call has then been
            # read and bound to the subscriptions that existed then, not this one.
            await self._listen(tid)
            return await self._subscribe_ephemeral(topic, tid)
        gid = await self._group_id(tid, group)
        await self._listen(tid)
        sub = GroupSubscription(self, topic, group, tid, gid)
        self._group_subs.setdefault(tid, set()).add(sub)
        return sub

    # -- LISTEN/NOTIFY ------------------------------------------------------------------

    async def _connect_listener(self) -> None:
        conn = await asyncpg.connect(self.config.dsn)
        try:
            for channel in list(self._channels):
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listen_conn = conn
        self._listen_ready.set()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._closed or conn is not self._listen_conn:
            return
        self._listen_conn = None
        self._listen_ready.clear()
        if self._relisten_task is None or self._relisten_task.done():
            self._relisten_task = self._spawn(self._relisten())

    async def _relisten(self) -> None:
        backoff = Backoff(self.config.reconnect_max_delay)
        while not self._closed:
            try:
                async with self._listen_lock:
                    await self._connect_listener()
                break
            except Exception as exc:
                if not is_transient(exc):
                    log.error("postgresql:// LISTEN reconnect failed: %s", type(exc).__name__)
                await backoff.sleep()
        # NOTIFYs sent while we were away are lost: let every consumer look for work.
        for tid in {*self._group_subs, *self._readers}:
            self._wake_local(tid)

    async def _listen(self, tid: int) -> None:
        channel = self.sql.channel(tid)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.reconnect_timeout
        while True:
            try:
                async with asyncio.timeout(max(end - loop.time(), 0.01)):
                    await self._listen_ready.wait()
            except TimeoutError:
                raise BackendUnavailableError(
                    f"postgresql:// LISTEN connection to {self._where} is down"
                ) from None
            async with self._listen_lock:
                conn = self._listen_conn
                if conn is None:
                    continue
                try:
                    with mapped("subscribe", self._where):
                        if channel in self._channels:
                            await conn.execute("SELECT 1")
                        else:
                            await conn.add_listener(channel, self._on_notify)
                            self._channels[channel] = tid
                    return
                except Exception as exc:
                    if not is_transient(exc):
                        raise
            if self._closed:
                raise closed("postgresql://")
            await asyncio.sleep(0.05)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # "tid:token": messages of topic tid were committed (or released) by the bus
        # whose token it is. This bus wakes its own consumers without a NOTIFY.
        head, _, token = payload.partition(":")
        if token == self._token:
            return
        try:
            tid = int(head)
        except ValueError:
            return
        self._wake_local(tid)

    def _wake_local(self, tid: int) -> None:
        for sub in self._group_subs.get(tid, ()):
            sub.wake.set()
        reader = self._readers.get(tid)
        if reader is not None:
            reader.wake.set()

    def _announce(self, tids: Iterable[int]) -> None:
        """Messages of ``tids`` became claimable: wake local consumers now, other
        processes' with a NOTIFY (see :meth:`_notify_loop`)."""
        for tid in tids:
            self._wake_local(tid)
            self._notify_tids.add(tid)
        self._notify_wake.set()

    async def _notify_loop(self) -> None:
        """Send the NOTIFYs :meth:`_announce` asks for: the first at once, then at most
        one per topic every ``_NOTIFY_WINDOW`` (a NOTIFY is only a wake-up)."""
        while True:
            await self._notify_wake.wait()
            self._notify_wake.clear()
            try:
                await self._send_notifies()
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// NOTIFY failed (consumers elsewhere wake later): %s", exc)
            await asyncio.sleep(_NOTIFY_WINDOW)

    async def _send_notifies(self) -> None:
        tids, self._notify_tids = self._notify_tids, set()
        if not tids:
            return
        token = self._token
        notes = ", ".join(f"pg_notify('{self.sql.channel(t)}', '{t}:{token}')" for t in tids)
        await self.run(
            lambda conn: conn.execute(f"SELECT {notes}"),
            what="notify",
            deadline=self.config.reconnect_timeout,
        )

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
        async def op(conn: Any) -> Snapshot:
            xmin, xmax, running = await conn.fetchrow(self.sql.snapshot)
            return Snapshot(xmin, xmax, frozenset(running))

        return await self.run(op, what="subscribe", deadline=self.config.reconnect_timeout)

    # -- settlements --------------------------------------------------------------------

    def queue_done(self, lease: Lease) -> None:
        """Every message of ``lease`` is settled: delete it in the next flush."""
        self._done.append(lease)
        self._settle_wake.set()

    def ack_pending(self) -> None:
        """An ack of a batch still in progress waits to be written (next flush)."""
        self._settle_wake.set()

    def queue_nack(self, sub: GroupSubscription, lease: Lease, txid: int, seq: int) -> None:
        """Record a nack: the message moves to a lease of its own in the next flush."""
        self._nacks.append((lease, txid, seq))
        self._nack_tids.add(sub.tid)
        self._settle_wake.set()

    async def _settle_loop(self) -> None:
        cfg = self.config
        while True:
            await self._settle_wake.wait()
            if len(self._done) + len(self._nacks) < cfg.ack_batch and cfg.ack_interval:
                await asyncio.sleep(cfg.ack_interval)
            self._settle_wake.clear()
            with contextlib.suppress(PubSubError):
                await self._flush(_PARTIAL_AFTER)
            if any(lease.acked for lease in self._held_leases()):
                self._settle_wake.set()  # acks of batches in progress: written when due

    async def flush_settlements(self) -> None:
        """Write every ack and nack made so far (returns when they are committed).

        A batch fully settled is deleted, nacked messages move to leases of their own,
        and the acks of batches still in progress are added to their leases. If the
        server stays unreachable for ``reconnect_timeout`` the writes are dropped (with
        a warning): the messages are then delivered again (at-least-once).
        """
        await self._flush(0.0)

    async def _flush(self, min_age: float) -> None:
        """:meth:`flush_settlements`, writing the acks of a batch in progress only once
        the oldest is ``min_age`` seconds old (most batches finish before: then only
        their deletion is written)."""
        async with self._flush_lock:
            while True:
                done, nacks, tids = self._done, self._nacks, self._nack_tids
                self._done, self._nacks, self._nack_tids = [], [], set()
                due = time.monotonic() - min_age
                partial = LeaseUpdate.take(
                    lease for lease in self._held_leases() if lease.acked and lease.acked_at <= due
                )
                if not (done or nacks or partial.lids):
                    return
                try:
                    await self.run(
                        functools.partial(self._settle, done, nacks, tids, partial),
                        what="ack",
                        deadline=self.config.reconnect_timeout,
                    )
                except ClosedError:
                    partial.restore()
                    return
                except PubSubError as exc:
                    log.warning(
                        "postgresql:// %d settlements not written (messages will be "
                        "delivered again): %s",
                        len(done) + len(nacks) + len(partial.seqs),
                        exc,
                    )
                    continue
                if nacks:
                    self._announce(tids)

    async def _settle(
        self,
        done: list[Lease],
        nacks: list[tuple[Lease, int, int]],
        tids: set[int],
        partial: LeaseUpdate,
        conn: Any,
    ) -> None:
        sql = self.sql
        if partial.lids:
            await partial.execute(conn, sql, self.config.visibility_timeout)
        if nacks:
            async with conn.transaction():
                await conn.execute(
                    sql.nack,
                    [lease.lid for lease, _, _ in nacks],
                    [lease.counter for lease, _, _ in nacks],
                    [txid for _, txid, _ in nacks],
                    [seq for _, _, seq in nacks],
                )
                if done:
                    await conn.execute(
                        sql.delete_leases, [x.lid for x in done], [x.counter for x in done]
                    )
        elif done:
            await conn.execute(sql.delete_leases, [x.lid for x in done], [x.counter for x in done])

    async def _update_leases(self, leases: list[Lease], seconds: float, deadline: float) -> None:
        """Write the pending acks of ``leases`` and set their deadline ``seconds`` from
        now (0: claimable again at once). Acks not written stay pending."""
        update = LeaseUpdate.take(leases)
        try:
            await self.run(
                lambda conn: update.execute(conn, self.sql, seconds),
                what="lease update",
                deadline=deadline,
            )
        except BaseException:
            update.restore()
            raise

    async def release(self, leases: list[Lease], tid: int) -> None:
        """Make the unsettled messages of ``leases`` claimable again at once (close)."""
        try:
            await self._update_leases(leases, 0.0, self.config.reconnect_timeout)
        except PubSubError as exc:
            log.warning(
                "postgresql:// could not release %d batches (they come back after the "
                "visibility timeout): %s",
                len(leases),
                exc,
            )
            return
        self._announce((tid,))

    def _held_leases(self) -> Iterator[Lease]:
        """The leases every group subscription of this bus holds."""
        for subs in self._group_subs.values():
            for sub in subs:
                yield from sub.held.values()

    def warn_held_back(self, topic: str, group: str | None, blocker: Any) -> None:
        """Log (once per minute) that delivery waits behind an open transaction."""
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

    # -- background upkeep --------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        """Renew the leases held by live subscriptions (writing their acks); revive LISTEN."""
        cfg = self.config
        period = cfg.visibility_timeout / 3
        while True:
            await asyncio.sleep(period)
            conn = self._listen_conn
            if conn is not None and conn.is_closed():
                self._on_listener_lost(conn)
            leases = list(self._held_leases())
            if not leases:
                continue
            try:
                await self._update_leases(leases, cfg.visibility_timeout, period)
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// lease renewal failed: %s", exc)

    async def _retention_loop(self, retention: float) -> None:
        """Delete fully consumed messages older than ``retention`` (one process at a time)."""
        sql = self.sql

        async def op(conn: Any) -> int:
            async with conn.transaction():
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, 0)", sql.lock_class ^ 1
                )
                if not got:
                    return 0
                status = await conn.execute(sql.retention, retention, _RETENTION_CHUNK)
            return int(str(status).rsplit(" ", 1)[-1])

        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                while (
                    await self.run(op, what="retention", deadline=self.config.cleanup_interval)
                    >= _RETENTION_CHUNK
                ):
                    pass
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// retention pass failed: %s", exc)

    async def run_retention(self) -> int:
        """Run one retention pass now; return how many messages were deleted."""
        if self.config.retention is None:
            return 0
        retention = self.config.retention
        sql = self.sql

        async def op(conn: Any) -> int:
            status = await conn.execute(sql.retention, retention, _RETENTION_CHUNK)
            return int(str(status).rsplit(" ", 1)[-1])

        total = 0
        while True:
            n = await self.run(op, what="retention", deadline=self.config.reconnect_timeout)
            total += n
            if n < _RETENTION_CHUNK:
                return total
