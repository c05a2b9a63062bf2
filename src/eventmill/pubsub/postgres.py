"""postgresql:// - durable topics in PostgreSQL tables (asyncpg).

Delivery model (see :mod:`eventmill.pubsub._postgres_sql` for the tables):

* ``publish`` returns after the messages are committed. Concurrent publish calls are
  coalesced (group commit): up to ``publish_batch`` messages from many calls go into
  one binary ``COPY`` in one transaction, ``publish_workers`` transactions at a time
  (a worker with a free slot beside it takes half the waiting calls, so one batch
  commits while the next one's publishers run); each call returns when the
  transaction holding its messages commits. Messages of one call are never split
  between transactions.
* Consumer groups are durable. Each group has one delivery row per message not yet
  acknowledged; members claim rows with ``FOR UPDATE SKIP LOCKED`` and lease them for
  ``visibility_timeout`` (renewed while the member is alive), so a message goes to
  one member at a time, and a message committed late (with an older seq) is never
  skipped. A new group starts at the oldest retained message (``replay``).
* ack deletes the delivery row; nack makes it claimable at once; acks and nacks are
  flushed in batches every ``ack_interval`` (and on ``close``). A consumer that dies
  holding messages loses its leases after ``visibility_timeout``.
* An idle consumer sleeps: the publishing transaction sends a NOTIFY on the topic's
  channel, which wakes it within milliseconds of the commit; ``poll_interval`` is only
  a fallback.
* Ephemeral subscriptions (no group) are fed from those NOTIFYs, which carry the
  committed seqs: they see what is committed after ``subscribe`` returns, nothing is
  stored for them, and they miss what is published while the LISTEN connection is
  down (e.g. during a server restart).
* Reconnect: every operation retries connection failures with capped exponential
  backoff; publishes give up after ``reconnect_timeout`` (raising
  :class:`~eventmill.BackendUnavailableError`), consumers and the LISTEN connection
  retry while the bus is open. A publish whose COMMIT was sent but not answered is
  retried, so a message can be stored twice (receivers drop duplicates by id);
  nothing acknowledged as published is lost.
* Retention: messages every group has acknowledged are deleted ``retention`` seconds
  after publishing, by one process at a time, every ``cleanup_interval``.

URL: ``postgresql://user:password@host:5432/db?schema=public&table_prefix=eventmill_``
plus any field of :class:`PostgresConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson

from eventmill.errors import (
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    EventmillError,
    PublishError,
    PubSubError,
    SubscribeError,
)
from eventmill.message import Message
from eventmill.pubsub._postgres_config import PostgresConfig
from eventmill.pubsub._postgres_sql import Sql
from eventmill.pubsub._postgres_subscriptions import (
    EphemeralSubscription,
    GroupSubscription,
    Lease,
)
from eventmill.pubsub._subscription import AsyncStartCloseable
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.factory import redact_url

__all__ = ["PostgresConfig", "PostgresPubSub"]

log = logging.getLogger("eventmill.pubsub.postgres")

T = TypeVar("T")

_EPHEMERAL_QUEUE = 10_000  # most NOTIFYs waiting to be fetched for ephemeral subscriptions
_RETENTION_CHUNK = 5000
_COPY_MIN = 8  # publish batches this large use COPY, smaller ones one INSERT (see _insert)

#: Session settings of the consuming pool. Claims, acks, nacks and lease renewals
#: only ever risk a redelivery if lost in a server crash, so their commits need not
#: wait for the WAL flush. Every statement it runs is built for an index (a queue
#: table's statistics are always stale: a scan+sort plan chosen for "49 rows" on a
#: 100,000-row backlog is 10x slower), so the planner is kept on indexes.
_CONSUMER_SETTINGS = {
    "synchronous_commit": "off",
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
}


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server or connection went away; try again"."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in ("08", "57", "53") or state in ("40001", "40P01")
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return "connection" in text and ("closed" in text or "lost" in text)
    return False


def _parse_ranges(text: str) -> list[int]:
    seqs: list[int] = []
    for item in text.split(","):
        a, _, b = item.partition("-")
        if b:
            seqs.extend(range(int(a), int(b) + 1))
        elif a:
            seqs.append(int(a))
    return seqs


@dataclass(slots=True)
class _Pending:
    """One publish call waiting for its group commit."""

    rows: list[tuple[int, str, str, bytes]]
    fut: asyncio.Future[None]


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
        self._ephemeral: dict[int, set[EphemeralSubscription]] = {}
        # group commit
        self._pending: deque[_Pending] = deque()
        self._pending_count = 0
        self._publishers: set[asyncio.Task[None]] = set()  # group-commit workers
        self._space: deque[asyncio.Future[None]] = deque()
        self._workers = 0
        self._collecting = False  # a worker is about to take a batch (see _publish_worker)
        # settlements
        self._ack_gids: list[int] = []
        self._ack_seqs: list[int] = []
        self._nacks: list[Lease] = []
        self._nack_tids: set[int] = set()
        self._settle_wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        # LISTEN/NOTIFY
        self._listen_conn: Any = None
        self._listen_ready = asyncio.Event()
        self._listen_lock = asyncio.Lock()
        self._channels: dict[str, int] = {}
        self._relisten_task: asyncio.Task[None] | None = None
        self._eph_queue: deque[tuple[int, tuple[EphemeralSubscription, ...], list[int]]] = deque()
        self._eph_wake = asyncio.Event()

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
                raise ClosedError("postgresql:// pubsub is closed")
            cfg = self.config
            loop = asyncio.get_running_loop()
            end = loop.time() + cfg.connect_timeout
            delay = 0.05
            while True:
                pools: list[Any] = []
                try:
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
                        await conn.execute(self.sql.ddl)
                    await self._connect_listener()
                    break
                except Exception as exc:
                    for p in pools:
                        p.terminate()
                    if not _transient(exc):
                        raise self._translate(exc, "start") from exc
                    if loop.time() + delay > end:
                        raise BackendUnavailableError(
                            f"postgresql server {self._where} unreachable "
                            f"({type(exc).__name__}: {exc})"
                        ) from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, cfg.backoff_max)
            self._pool, self._cpool = pool, cpool
            self._spawn(self._settle_loop())
            self._spawn(self._keepalive_loop())
            self._spawn(self._dispatch_loop())
            if cfg.retention is not None:
                self._spawn(self._retention_loop(cfg.retention))

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
        """Drop every connection at once, flushing nothing: as if the process died.

        For tests and emergency shutdown. Unflushed settlements are lost (their
        messages come back after ``visibility_timeout``); queued publishes fail.
        """
        if self._aborted:
            return
        self._closed = self._aborted = True
        for sub in self._all_subs():
            sub.abort()
        self._group_subs.clear()
        self._ephemeral.clear()
        for pool in (self._pool, self._cpool):
            if pool is not None:
                pool.terminate()
        if self._listen_conn is not None:
            self._listen_conn.terminate()
            self._listen_conn = None
        while self._pending:
            item = self._pending.popleft()
            if not item.fut.done():
                item.fut.set_exception(ClosedError("postgresql:// pubsub was aborted"))
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
        for es in self._ephemeral.values():
            subs.extend(es)
        return subs

    def forget(self, sub: GroupSubscription | EphemeralSubscription) -> None:
        """Unregister a closed subscription (called by the subscription)."""
        if isinstance(sub, GroupSubscription):
            self._group_subs.get(sub.tid, set()).discard(sub)
        else:
            self._ephemeral.get(sub.tid, set()).discard(sub)

    # -- running statements with reconnect ----------------------------------------------

    async def run(
        self,
        op: Callable[[Any], Awaitable[T]],
        *,
        what: str,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
        durable: bool = False,
    ) -> T:
        """Run ``op(connection)``, retrying connection failures with capped backoff.

        ``durable`` ops (publish, topic and group creation) run on the pool whose
        commits wait for the WAL flush; the others on the ``synchronous_commit=off`` one.

        Gives up after ``deadline`` seconds (``None``: while the bus is open, or until
        ``stop()``), raising :class:`BackendUnavailableError`; raises
        :class:`ClosedError` once aborted or stopped, and translates other errors.
        """
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        delay = 0.05
        warned = False
        while True:
            if self._aborted or (stop is not None and stop()):
                raise ClosedError("postgresql:// pubsub or subscription is closed")
            if end is None and self._closed:
                raise ClosedError("postgresql:// pubsub is closed")
            try:
                async with (self._pool if durable else self._cpool).acquire() as conn:
                    return await op(conn)
            except Exception as exc:
                if self._aborted:
                    raise ClosedError("postgresql:// pubsub was aborted") from exc
                if not _transient(exc):
                    raise self._translate(exc, what) from exc
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
                delay = min(delay * 2, self.config.backoff_max)

    def _translate(self, exc: BaseException, what: str) -> EventmillError:
        text = f"postgresql:// {what} failed on {self._where}: {type(exc).__name__}: {exc}"
        if isinstance(exc, EventmillError):
            return exc
        if isinstance(
            exc,
            asyncpg.InvalidPasswordError
            | asyncpg.InvalidAuthorizationSpecificationError
            | asyncpg.InvalidCatalogNameError,
        ):
            return ConfigurationError(text)
        if what == "publish":
            return PublishError(text)
        if what in ("subscribe", "claim"):
            return SubscribeError(text)
        return PubSubError(text)

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
            if found is not None:
                return int(found)
            async with conn.transaction():
                # Exclusive: waits for publishes in flight on this topic, blocks new ones.
                await conn.execute(f"SELECT pg_advisory_xact_lock({sql.lock_class}, {tid})")
                found = await conn.fetchval(sql.insert_group, tid, group)
                if found is None:
                    found = await conn.fetchval(sql.select_group, tid, group)
                else:
                    await conn.execute(sql.backfill_group, found, tid)
            return int(found)

        gid = await self.run(
            op, what="subscribe", deadline=self.config.reconnect_timeout, durable=True
        )
        self._gids[(tid, group)] = gid
        return gid

    # -- publish (group commit) ---------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        if self._closed:
            raise ClosedError("postgresql:// pubsub is closed")
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
        rows = [(tid, m.id, dumps(m.metadata).decode(), m.payload) for m in messages]
        n = len(rows)
        loop = asyncio.get_running_loop()
        while self._pending_count and self._pending_count + n > self.config.max_pending:
            wait: asyncio.Future[None] = loop.create_future()
            self._space.append(wait)
            await wait
            if self._closed:
                raise ClosedError("postgresql:// pubsub is closed")
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Pending(rows, fut))
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
        finally:
            self._workers -= 1

    async def _insert(self, batch: list[_Pending], conn: Any) -> None:
        """One statement, committed on its own; the trigger fans out and notifies.

        A binary ``COPY`` (which fires the statement trigger like ``INSERT`` and
        numbers the rows in record order): asyncpg encodes its records at about half
        the CPU of four arrays. Below ``_COPY_MIN`` rows, one ``INSERT`` instead: one
        round trip where ``COPY`` takes two, which is what a lone publisher waits for.
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
            raise ClosedError("postgresql:// pubsub is closed")
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
            eph = EphemeralSubscription(self, topic, tid, self.config.ephemeral_buffer)
            self._ephemeral.setdefault(tid, set()).add(eph)
            return eph
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
        delay = 0.05
        while not self._closed:
            try:
                async with self._listen_lock:
                    await self._connect_listener()
                break
            except Exception as exc:
                if not _transient(exc):
                    log.error("postgresql:// LISTEN reconnect failed: %s", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max)
        # NOTIFYs sent while we were away are lost: let every consumer look for work.
        for subs in self._group_subs.values():
            for sub in subs:
                sub.wake.set()

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
                    if channel in self._channels:
                        await conn.execute("SELECT 1")
                    else:
                        await conn.add_listener(channel, self._on_notify)
                        self._channels[channel] = tid
                    return
                except Exception as exc:
                    if not _transient(exc):
                        raise self._translate(exc, "subscribe") from exc
            if self._closed:
                raise ClosedError("postgresql:// pubsub is closed")
            await asyncio.sleep(0.05)

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        head, _, ranges = payload.partition(":")
        try:
            tid = int(head)
        except ValueError:
            return
        for sub in self._group_subs.get(tid, ()):
            sub.wake.set()
        eph = self._ephemeral.get(tid)
        if eph and ranges:
            if len(self._eph_queue) >= _EPHEMERAL_QUEUE:
                self._eph_queue.popleft()
                log.warning("postgresql:// ephemeral fetch queue full: dropped a NOTIFY")
            self._eph_queue.append((tid, tuple(eph), _parse_ranges(ranges)))
            self._eph_wake.set()

    async def _dispatch_loop(self) -> None:
        """Fetch the messages named by NOTIFYs and hand them to ephemeral subscriptions."""
        while True:
            await self._eph_wake.wait()
            self._eph_wake.clear()
            while self._eph_queue:
                entries = []
                wanted: list[int] = []
                topics: list[int] = []
                while self._eph_queue and len(wanted) < 5000:
                    entry = self._eph_queue.popleft()
                    entries.append(entry)
                    wanted.extend(entry[2])
                    topics.extend(itertools.repeat(entry[0], len(entry[2])))
                try:
                    rows = await self.run(
                        functools.partial(self._fetch_seqs, topics, wanted),
                        what="ephemeral fetch",
                        deadline=self.config.reconnect_timeout,
                    )
                except ClosedError:
                    return
                except Exception as exc:
                    log.warning(
                        "postgresql:// ephemeral fetch failed, %d messages not delivered: %s",
                        len(wanted),
                        exc,
                    )
                    continue
                by_seq = {
                    seq: (mid, orjson.loads(meta), payload) for seq, mid, meta, payload in rows
                }
                for _, targets, seqs in entries:
                    for seq in seqs:
                        found = by_seq.get(seq)
                        if found is None:
                            continue
                        for sub in targets:
                            sub.push(found)

    async def _fetch_seqs(self, tids: list[int], seqs: list[int], conn: Any) -> list[Any]:
        rows: list[Any] = await conn.fetch(self.sql.fetch_messages, tids, seqs)
        return rows

    # -- settlements --------------------------------------------------------------------

    def queue_settlement(self, sub: GroupSubscription, lease: Lease, ok: bool) -> None:
        """Record an ack (``ok``) or nack; flushed in the next batch."""
        if ok:
            self._ack_gids.append(lease[0])
            self._ack_seqs.append(lease[1])
        else:
            self._nacks.append(lease)
            self._nack_tids.add(sub.tid)
        self._settle_wake.set()

    async def _settle_loop(self) -> None:
        cfg = self.config
        while True:
            await self._settle_wake.wait()
            if len(self._ack_seqs) + len(self._nacks) < cfg.ack_batch and cfg.ack_interval:
                await asyncio.sleep(cfg.ack_interval)
            self._settle_wake.clear()
            with contextlib.suppress(PubSubError):
                await self.flush_settlements()

    async def flush_settlements(self) -> None:
        """Write every ack and nack made so far (returns when they are committed).

        If the server stays unreachable for ``reconnect_timeout`` the batch is dropped
        (with a warning): the messages are then delivered again (at-least-once).
        """
        async with self._flush_lock:
            while self._ack_seqs or self._nacks:
                gids, seqs = self._ack_gids, self._ack_seqs
                nacks, tids = self._nacks, self._nack_tids
                self._ack_gids, self._ack_seqs, self._nacks, self._nack_tids = [], [], [], set()
                try:
                    await self.run(
                        functools.partial(self._settle, gids, seqs, nacks, tids),
                        what="ack",
                        deadline=self.config.reconnect_timeout,
                    )
                except ClosedError:
                    return
                except PubSubError as exc:
                    log.warning(
                        "postgresql:// %d settlements not written (messages will be "
                        "delivered again): %s",
                        len(seqs) + len(nacks),
                        exc,
                    )
                    continue
                if nacks:
                    self._wake_groups({lease[0] for lease in nacks})

    async def _settle(
        self, gids: list[int], seqs: list[int], nacks: list[Lease], tids: set[int], conn: Any
    ) -> None:
        if seqs:
            by_gid: dict[int, list[int]] = {}
            for gid, seq in zip(gids, seqs, strict=True):
                by_gid.setdefault(gid, []).append(seq)
            for gid, group_seqs in by_gid.items():
                await conn.execute(self.sql.ack, gid, group_seqs)
        if nacks:
            await self._set_visibility(nacks, 0.0, tids, conn)

    async def _set_visibility(
        self, leases: list[Lease], seconds: float, notify: set[int], conn: Any
    ) -> None:
        by_gid: dict[int, tuple[list[int], list[int]]] = {}
        for gid, seq, lease in leases:
            entry = by_gid.setdefault(gid, ([], []))
            entry[0].append(seq)
            entry[1].append(lease)
        for gid, (seqs, held) in by_gid.items():
            await conn.execute(self.sql.set_visibility, gid, seqs, held, seconds)
        if notify:
            notes = ", ".join(f"pg_notify('{self.sql.channel(t)}', '{t}:')" for t in notify)
            await conn.execute(f"SELECT {notes}")

    async def release(self, leases: list[Lease], tid: int) -> None:
        """Make held messages claimable again at once (subscription close)."""
        try:
            await self.run(
                functools.partial(self._set_visibility, leases, 0.0, {tid}),
                what="release",
                deadline=self.config.reconnect_timeout,
            )
        except PubSubError as exc:
            log.warning(
                "postgresql:// could not release %d messages (they come back after the "
                "visibility timeout): %s",
                len(leases),
                exc,
            )
            return
        self._wake_groups({lease[0] for lease in leases})

    def _wake_groups(self, gids: set[int]) -> None:
        for subs in self._group_subs.values():
            for sub in subs:
                if sub.gid in gids:
                    sub.wake.set()

    # -- background upkeep --------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        """Renew the leases of messages held by live subscriptions; revive LISTEN."""
        cfg = self.config
        period = cfg.visibility_timeout / 3
        while True:
            await asyncio.sleep(period)
            conn = self._listen_conn
            if conn is not None and conn.is_closed():
                self._on_listener_lost(conn)
            leases = [
                lease
                for subs in self._group_subs.values()
                for sub in subs
                for lease in sub.inflight.values()
            ]
            if not leases:
                continue
            try:
                await self.run(
                    functools.partial(self._set_visibility, leases, cfg.visibility_timeout, set()),
                    what="lease renewal",
                    deadline=period,
                )
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
