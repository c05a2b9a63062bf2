"""Throughput of postgresql:// against raw asyncpg doing the same work.

Two figures, each beside the raw baseline and the ratio:

* publish: 100 concurrent publishers, each awaiting one-message ``publish`` calls one
  after another (eventmill group-commits them) - raw: one task inserting with
  ``executemany`` in transactions of 1,000 rows into a plain queue table;
* end-to-end: the same publishers while a Router (group, no-op handler, ack) consumes
  - raw: the executemany producer while one task loops ``SELECT ... FOR UPDATE SKIP
  LOCKED LIMIT 1000`` + ``DELETE`` of those rows in one transaction (the usual
  at-least-once SQL queue). Clock stops when the last message was handled.

Like with like: both sides' publishes commit durably (the server's
``synchronous_commit``, normally on); both consumers commit with
``synchronous_commit=off`` (eventmill's consuming pool does: a lost claim or ack only
means a redelivery). eventmill's publish batches are at most 100 messages (100
publishers, each waiting for its commit); the raw producer commits 1,000 at a time.

The raw queue keeps one row per message and no consumer groups, fan-out, leases or
NOTIFY; eventmill writes a message row plus a delivery row per group and keeps the
message for replay. Uses the PostgreSQL at ``--url`` (default the shared
127.0.0.1:5432/test) in a schema of its own, dropped afterwards.

Each figure is the best of ``--rounds`` alternating rounds (all rounds printed), since
the machine is shared and noisy.

    .venv/bin/python benchmarks/bench_postgres.py [--messages 50000] [--payload 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import asyncpg

from eventmill.message import Message
from eventmill.pubsub.postgres import PostgresPubSub

PUBLISHERS = 100
RAW_BATCH = 1_000

try:
    from eventmill.router import Router, RouterConfig
except ImportError:  # pragma: no cover - the router is a sibling package
    Router = None  # type: ignore[assignment,misc]


def bus_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}&table_prefix=b{uuid.uuid4().hex[:6]}_"


async def em_publish(url: str, schema: str, total: int, payload: bytes) -> float:
    bus = PostgresPubSub.from_url(bus_url(url, schema))
    await bus.start()
    per = total // PUBLISHERS

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    elapsed = time.perf_counter() - t0
    await bus.close()
    return per * PUBLISHERS / elapsed


async def raw_table(conn: asyncpg.Connection, schema: str) -> str:
    table = f'"{schema}"."raw_{uuid.uuid4().hex[:8]}"'
    await conn.execute(
        f"CREATE TABLE {table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "msg_id text NOT NULL, metadata text NOT NULL, payload bytea NOT NULL)"
    )
    return table


async def raw_produce(pool: asyncpg.Pool, table: str, total: int, payload: bytes) -> None:
    insert = f"INSERT INTO {table} (msg_id, metadata, payload) VALUES ($1, $2, $3)"
    async with pool.acquire() as conn:
        for start in range(0, total, RAW_BATCH):
            rows = [
                (os.urandom(16).hex(), "{}", payload) for _ in range(min(RAW_BATCH, total - start))
            ]
            await conn.executemany(insert, rows)


async def raw_publish(url: str, schema: str, total: int, payload: bytes) -> float:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        table = await raw_table(conn, schema)
    t0 = time.perf_counter()
    await raw_produce(pool, table, total, payload)
    elapsed = time.perf_counter() - t0
    await pool.close()
    return total / elapsed


async def em_end_to_end(
    url: str, schema: str, total: int, payload: bytes, concurrency: int
) -> tuple[float, str]:
    bus = PostgresPubSub.from_url(bus_url(url, schema))
    await bus.start()
    per = total // PUBLISHERS
    want = per * PUBLISHERS
    handled = 0
    done = asyncio.Event()

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    if Router is not None:
        what = "router"

        async def handler(msg: Message) -> None:
            nonlocal handled
            handled += 1
            if handled >= want:
                done.set()

        router = Router(subscriber=bus, publisher=bus, config=RouterConfig())
        router.add_handler("bench", "bench", handler, group="g", concurrency=concurrency)
        runner = asyncio.create_task(router.run())
        await router.running()
    else:
        what = "subscription (eventmill.router not importable)"
        sub = await bus.subscribe("bench", group="g")

        async def consume() -> None:
            nonlocal handled
            async for msg in sub:
                handled += 1
                msg.ack()
                if handled >= want:
                    done.set()

        runner = asyncio.create_task(consume())
    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - t0
    if Router is not None:
        await router.close()
        await runner
    else:
        runner.cancel()
    await bus.close()
    return want / elapsed, what


async def raw_end_to_end(url: str, schema: str, total: int, payload: bytes) -> float:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=3)
    async with pool.acquire() as conn:
        table = await raw_table(conn, schema)
    consumer = await asyncpg.connect(url, server_settings={"synchronous_commit": "off"})
    claim = (
        f"SELECT id, msg_id, metadata, payload FROM {table} "
        f"ORDER BY id LIMIT {RAW_BATCH} FOR UPDATE SKIP LOCKED"
    )
    delete = f"DELETE FROM {table} WHERE id = ANY($1::bigint[])"

    async def consume() -> None:
        handled = 0
        conn = consumer
        while handled < total:
            async with conn.transaction():
                rows = await conn.fetch(claim)
                if rows:
                    await conn.execute(delete, [r["id"] for r in rows])
            handled += len(rows)
            if not rows:
                await asyncio.sleep(0.001)

    t0 = time.perf_counter()
    await asyncio.gather(raw_produce(pool, table, total, payload), consume())
    elapsed = time.perf_counter() - t0
    await consumer.close()
    await pool.close()
    return total / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=100, help="payload bytes")
    parser.add_argument("--concurrency", type=int, default=8, help="router handler concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (best shown)")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    n = args.messages
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(args.url)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    print(f"postgresql:// {n} messages of {args.payload} B, {PUBLISHERS} publishers")
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        await em_publish(args.url, schema, 2_000, payload)  # warm up
        pub: dict[str, list[float]] = {"em": [], "raw": []}
        e2e: dict[str, list[float]] = {"em": [], "raw": []}
        what = ""
        for _ in range(args.rounds):  # alternate, so both sides share the machine's noise
            pub["em"].append(await em_publish(args.url, schema, n, payload))
            pub["raw"].append(await raw_publish(args.url, schema, n, payload))
            rate, what = await em_end_to_end(args.url, schema, n, payload, args.concurrency)
            e2e["em"].append(rate)
            e2e["raw"].append(await raw_end_to_end(args.url, schema, n, payload))
        for name, runs in (("publish", pub), ("end-to-end", e2e)):
            em, raw = max(runs["em"]), max(runs["raw"])
            print(
                f"  {name:<11} eventmill {em:>9,.0f} msgs/s   raw {raw:>9,.0f} msgs/s   "
                f"{em / raw:.2f}x   (best of {args.rounds}; eventmill "
                + " / ".join(f"{r:,.0f}" for r in runs["em"])
                + ", raw "
                + " / ".join(f"{r:,.0f}" for r in runs["raw"])
                + ")"
            )
        print(f"  end-to-end consumed via {what}, handler concurrency {args.concurrency}")
        load = os.getloadavg()
        print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (at the start: {load0})")
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
