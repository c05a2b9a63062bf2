"""The raw clients doing the broker workloads of :mod:`_harness` by hand.

Each message carries what eventmill sends (a 32-hex-digit id beside the payload),
each consumer reads in batches of the size eventmill's backend uses by default and
acks every message it read, and nothing else: no retries, no reconnects, no
leases or visibility timeouts, no message objects. ``batched`` is the publish-only
ceiling of workload (b): one task handing the client 1,000 messages at a time.

The code is adapted from the per-backend benchmarks (bench_redis.py, bench_nats.py,
bench_kafka.py, bench_postgres.py, bench_core.py), kept here so that this file
depends on no eventmill module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from _harness import Tally, timed_batches, timed_concurrent, timed_publishes, unique

BATCH = 1_000


_POOL = 4096
_pool = b""
_pos = _POOL


def new_id() -> str:
    """A random 128-bit id in hex, drawn from 4 KiB of ``os.urandom`` at a time (as
    eventmill draws its message ids)."""
    global _pool, _pos
    if _pos >= _POOL:
        _pool, _pos = os.urandom(_POOL), 0
    _pos += 16
    return _pool[_pos - 16 : _pos].hex()


# -- memory: asyncio.Queue ------------------------------------------------------------------


class RawMemory:
    """``asyncio.Queue``: ``put`` to publish; ``get`` + ``task_done`` to consume."""

    label = "asyncio.Queue put / get + task_done"

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize

    async def _consumer(self, q: asyncio.Queue[tuple[str, bytes]], tally: Tally) -> None:
        while True:
            await q.get()
            q.task_done()
            tally.hit()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self.maxsize)
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consumer(q, tally))
        await q.put((new_id(), b"warm-up"))
        while tally.n < 1:
            await asyncio.sleep(0)
        rate = await timed_publishes(n, lambda: q.put((new_id(), payload)), tally)
        task.cancel()
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self.maxsize)
        return await timed_concurrent(n, lambda: q.put((new_id(), payload)))

    async def batched(self, n: int, payload: bytes) -> float:
        q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self.maxsize)

        async def send(k: int) -> None:
            for _ in range(k):
                q.put_nowait((new_id(), payload))

        return await timed_batches(n, BATCH, send)

    async def drain(self, n: int, payload: bytes) -> float:
        q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(self.maxsize)
        for _ in range(n):
            q.put_nowait((new_id(), payload))
        tally = Tally(n)
        task = asyncio.create_task(self._consumer(q, tally))
        await tally.wait()
        task.cancel()
        return tally.drain_rate()


# -- SQL queues (SQLite with aiosqlite, PostgreSQL with asyncpg) ------------------------------

_SQLITE_TABLE = (
    "CREATE TABLE {t} (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
    " metadata BLOB, payload BLOB NOT NULL)"
)


class RawSQLite:
    """aiosqlite on a plain queue table (WAL, ``synchronous=FULL`` like eventmill's
    default): one ``INSERT`` + ``COMMIT`` per publish; the consumer, on a connection
    of its own, selects up to 100 rows in order and deletes them in one transaction,
    and polls every millisecond when it found none."""

    label = "aiosqlite INSERT+COMMIT / SELECT+DELETE"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def _connect(self, path: Path) -> Any:
        import aiosqlite

        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA busy_timeout = 5000")
        return db

    async def _open(self) -> tuple[Any, str]:
        path = self.folder / f"{unique('raw')}.db"
        db = await self._connect(path)
        await db.execute(_SQLITE_TABLE.format(t="q"))
        return db, str(path)

    @staticmethod
    async def _insert(db: Any, payload: bytes) -> None:
        await db.execute(
            "INSERT INTO q (id, metadata, payload) VALUES (?, NULL, ?)", (new_id(), payload)
        )
        await db.commit()

    async def _consume(self, path: str, tally: Tally, batch: int = 100) -> None:
        db = await self._connect(Path(path))
        try:
            while not tally.done.is_set():
                await db.execute("BEGIN IMMEDIATE")
                cur = await db.execute(
                    f"SELECT seq, id, metadata, payload FROM q ORDER BY seq LIMIT {batch}"
                )
                rows = list(await cur.fetchall())
                if rows:
                    await db.execute("DELETE FROM q WHERE seq <= ?", (rows[-1][0],))
                await db.execute("COMMIT")
                for _ in rows:
                    tally.hit()
                if not rows:
                    await asyncio.sleep(0.001)
        finally:
            await db.close()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        db, path = await self._open()
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consume(path, tally))
        await self._insert(db, b"warm-up")
        while tally.n < 1:
            await asyncio.sleep(0.001)
        rate = await timed_publishes(n, lambda: self._insert(db, payload), tally)
        await task
        await db.close()
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        db, _ = await self._open()
        await self._insert(db, b"warm-up")
        rate = await timed_concurrent(n, lambda: self._insert(db, payload))
        await db.close()
        return rate

    async def _insert_many(self, db: Any, k: int, payload: bytes) -> None:
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(
            "INSERT INTO q (id, metadata, payload) VALUES (?, NULL, ?)",
            [(new_id(), payload) for _ in range(k)],
        )
        await db.execute("COMMIT")

    async def batched(self, n: int, payload: bytes) -> float:
        db, _ = await self._open()
        rate = await timed_batches(n, BATCH, lambda k: self._insert_many(db, k, payload))
        await db.close()
        return rate

    async def drain(self, n: int, payload: bytes) -> float:
        db, path = await self._open()
        for start in range(0, n, BATCH):
            await self._insert_many(db, min(BATCH, n - start), payload)
        await db.close()
        tally = Tally(n)
        await self._consume(path, tally)
        return tally.drain_rate()


class RawPostgres:
    """asyncpg on a plain queue table: one autocommitted ``INSERT`` per publish (a pool
    of 10 connections, eventmill's default); the consumer claims up to 500 rows
    (eventmill's prefetch) with ``SELECT ... FOR UPDATE SKIP LOCKED`` and deletes them
    in the same transaction (``synchronous_commit=off``, as eventmill's consumers),
    polling every millisecond when it found none - the usual at-least-once SQL queue,
    without eventmill's groups, leases, NOTIFY or retained log."""

    label = "asyncpg INSERT / SELECT FOR UPDATE SKIP LOCKED + DELETE"

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema

    async def _open(self) -> tuple[Any, str]:
        import asyncpg

        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=10)
        table = f'"{self.schema}"."{unique("raw").replace("-", "_")}"'
        await pool.execute(
            f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "msg_id text NOT NULL, metadata text NOT NULL, payload bytea NOT NULL)"
        )
        return pool, table

    @staticmethod
    def _insert_sql(table: str) -> str:
        return f"INSERT INTO {table} (msg_id, metadata, payload) VALUES ($1, '{{}}', $2)"

    async def _consume(self, table: str, tally: Tally, batch: int = 500) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, server_settings={"synchronous_commit": "off"})
        claim = (
            f"SELECT id, msg_id, metadata, payload FROM {table} "
            f"ORDER BY id LIMIT {batch} FOR UPDATE SKIP LOCKED"
        )
        delete = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"
        try:
            while not tally.done.is_set():
                async with conn.transaction():
                    rows = await conn.fetch(claim)
                    if rows:
                        await conn.execute(delete, [r["id"] for r in rows])
                for _ in rows:
                    tally.hit()
                if not rows:
                    await asyncio.sleep(0.001)
        finally:
            await conn.close()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        pool, table = await self._open()
        insert = self._insert_sql(table)
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consume(table, tally))
        await pool.execute(insert, new_id(), b"warm-up")
        while tally.n < 1:
            await asyncio.sleep(0.001)
        rate = await timed_publishes(n, lambda: pool.execute(insert, new_id(), payload), tally)
        await task
        await pool.close()
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        pool, table = await self._open()
        insert = self._insert_sql(table)
        await pool.execute(insert, new_id(), b"warm-up")
        rate = await timed_concurrent(n, lambda: pool.execute(insert, new_id(), payload))
        await pool.close()
        return rate

    async def _insert_many(self, pool: Any, table: str, k: int, payload: bytes) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(self._insert_sql(table), [(new_id(), payload) for _ in range(k)])

    async def batched(self, n: int, payload: bytes) -> float:
        pool, table = await self._open()
        rate = await timed_batches(n, BATCH, lambda k: self._insert_many(pool, table, k, payload))
        await pool.close()
        return rate

    async def drain(self, n: int, payload: bytes) -> float:
        pool, table = await self._open()
        for start in range(0, n, BATCH):
            await self._insert_many(pool, table, min(BATCH, n - start), payload)
        await pool.close()
        tally = Tally(n)
        await self._consume(table, tally)
        return tally.drain_rate()


# -- Redis: redis-py --------------------------------------------------------------------------


class RawRedis:
    """redis-py: ``XADD`` per publish (fields ``id`` and ``payload``); the consumer
    loops ``XREADGROUP COUNT 100 BLOCK`` (eventmill's batch size) and ``XACK``\\ s the
    ids of each read in one call."""

    label = "redis-py XADD / XREADGROUP + XACK"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def _client(self) -> Any:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(self.url)

    async def _consume(self, client: Any, key: str, tally: Tally, count: int = 100) -> None:
        while not tally.done.is_set():
            resp: Any = await client.xreadgroup("g", "c", {key: ">"}, count=count, block=100)
            for _stream, entries in resp or ():
                ids = [entry_id for entry_id, _fields in entries]
                await client.xack(key, "g", *ids)
                for _ in ids:
                    tally.hit()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        client = self._client()
        key = self.prefix + unique("a")
        await client.xgroup_create(key, "g", id="0", mkstream=True)
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consume(client, key, tally))
        await client.xadd(key, {"id": new_id(), "payload": b"warm-up"})
        while tally.n < 1:
            await asyncio.sleep(0.001)
        rate = await timed_publishes(
            n, lambda: client.xadd(key, {"id": new_id(), "payload": payload}), tally
        )
        await task
        await client.delete(key)
        await client.aclose()
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        client = self._client()
        key = self.prefix + unique("b")
        await client.xadd(key, {"id": new_id(), "payload": b"warm-up"})
        rate = await timed_concurrent(
            n, lambda: client.xadd(key, {"id": new_id(), "payload": payload})
        )
        await client.delete(key)
        await client.aclose()
        return rate

    async def _pipelined(self, client: Any, key: str, k: int, payload: bytes) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(k):
                pipe.xadd(key, {"id": new_id(), "payload": payload})
            await pipe.execute()

    async def batched(self, n: int, payload: bytes) -> float:
        client = self._client()
        key = self.prefix + unique("b1")
        rate = await timed_batches(n, BATCH, lambda k: self._pipelined(client, key, k, payload))
        await client.delete(key)
        await client.aclose()
        return rate

    async def drain(self, n: int, payload: bytes) -> float:
        client = self._client()
        key = self.prefix + unique("c")
        await client.xgroup_create(key, "g", id="0", mkstream=True)
        for start in range(0, n, BATCH):
            await self._pipelined(client, key, min(BATCH, n - start), payload)
        tally = Tally(n)
        await self._consume(client, key, tally)
        await client.delete(key)
        await client.aclose()
        return tally.drain_rate()


# -- NATS JetStream: nats-py ------------------------------------------------------------------


class RawNats:
    """nats-py JetStream: ``js.publish`` per publish, awaiting its PubAck (with a
    ``Nats-Msg-Id`` header, as eventmill sends for de-duplication); the consumer
    loops ``fetch(100)`` (eventmill's batch) on a durable pull consumer and acks each
    message. File storage, one stream per run."""

    label = "nats-py js.publish / pull fetch + ack"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    async def _setup(self) -> tuple[Any, Any, str, str]:
        import nats
        from nats.js import api

        nc = await nats.connect(self.url)
        js = nc.jetstream()
        name = self.prefix + unique("raw")
        subject = f"{name}.bench"
        await js.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE)
        return nc, js, name, subject

    @staticmethod
    def _publish(js: Any, subject: str, payload: bytes) -> Any:
        return js.publish(subject, payload, headers={"Nats-Msg-Id": new_id()})

    @staticmethod
    async def _consume(js: Any, name: str, subject: str, tally: Tally, batch: int = 100) -> None:
        psub = await js.pull_subscribe(subject, durable="g", stream=name)
        while not tally.done.is_set():
            try:
                msgs = await psub.fetch(batch, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                tally.hit()
        await psub.unsubscribe()

    async def _teardown(self, nc: Any, js: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await nc.close()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        nc, js, name, subject = await self._setup()
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consume(js, name, subject, tally))
        await self._publish(js, subject, b"warm-up")
        while tally.n < 1:
            await asyncio.sleep(0.001)
        rate = await timed_publishes(n, lambda: self._publish(js, subject, payload), tally)
        await task
        await self._teardown(nc, js, name)
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        nc, js, name, subject = await self._setup()
        await self._publish(js, subject, b"warm-up")
        rate = await timed_concurrent(n, lambda: self._publish(js, subject, payload))
        await self._teardown(nc, js, name)
        return rate

    @staticmethod
    async def _window(js: Any, subject: str, k: int, payload: bytes) -> None:
        futures = [
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": new_id()})
            for _ in range(k)
        ]
        await asyncio.gather(*futures)

    async def batched(self, n: int, payload: bytes) -> float:
        nc, js, name, subject = await self._setup()
        rate = await timed_batches(n, BATCH, lambda k: self._window(js, subject, k, payload))
        await self._teardown(nc, js, name)
        return rate

    async def drain(self, n: int, payload: bytes) -> float:
        nc, js, name, subject = await self._setup()
        for start in range(0, n, BATCH):
            await self._window(js, subject, min(BATCH, n - start), payload)
        tally = Tally(n)
        await self._consume(js, name, subject, tally)
        await self._teardown(nc, js, name)
        return tally.drain_rate()


# -- Kafka: aiokafka --------------------------------------------------------------------------


class RawKafka:
    """aiokafka: ``send_and_wait`` per publish (``acks=all``, like eventmill; an ``id``
    header); topics of 4 partitions (eventmill's default); the consumer, in a group,
    loops ``getmany(max_records=1000)`` and ``commit()``\\ s after each batch."""

    label = "aiokafka send_and_wait / getmany + commit"

    def __init__(self, bootstrap: str, partitions: int = 4) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions

    async def _topic(self, kind: str) -> str:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        topic = unique(kind)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, self.partitions, 1)])
        finally:
            await admin.close()
        return topic

    async def _producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", max_batch_size=262_144
        )
        await producer.start()
        return producer

    @staticmethod
    def _send(producer: Any, topic: str, payload: bytes) -> Any:
        return producer.send_and_wait(topic, payload, headers=[("id", new_id().encode())])

    async def _consume(self, topic: str, tally: Tally) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=unique("g"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            while not tally.done.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                n = sum(len(records) for records in batch.values())
                if n:
                    await consumer.commit()
                    for _ in range(n):
                        tally.hit()
        finally:
            await consumer.stop()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        topic = await self._topic("a")
        producer = await self._producer()
        tally = Tally(n + 1)
        task = asyncio.create_task(self._consume(topic, tally))
        await self._send(producer, topic, b"warm-up")
        while tally.n < 1:
            await asyncio.sleep(0.001)
        rate = await timed_publishes(n, lambda: self._send(producer, topic, payload), tally)
        await task
        await producer.stop()
        return rate

    async def concurrent(self, n: int, payload: bytes) -> float:
        topic = await self._topic("b")
        producer = await self._producer()
        await self._send(producer, topic, b"warm-up")
        rate = await timed_concurrent(n, lambda: self._send(producer, topic, payload))
        await producer.stop()
        return rate

    @staticmethod
    async def _window(producer: Any, topic: str, k: int, payload: bytes) -> None:
        futures = [
            await producer.send(topic, payload, headers=[("id", new_id().encode())])
            for _ in range(k)
        ]
        await asyncio.gather(*futures)

    async def batched(self, n: int, payload: bytes) -> float:
        topic = await self._topic("b1")
        producer = await self._producer()
        rate = await timed_batches(n, BATCH, lambda k: self._window(producer, topic, k, payload))
        await producer.stop()
        return rate

    async def drain(self, n: int, payload: bytes) -> float:
        topic = await self._topic("c")
        producer = await self._producer()
        for start in range(0, n, BATCH):
            await self._window(producer, topic, min(BATCH, n - start), payload)
        await producer.stop()
        tally = Tally(n)
        await self._consume(topic, tally)
        return tally.drain_rate()
