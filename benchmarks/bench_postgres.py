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
NOTIFY, and deletes what it consumed; eventmill keeps the log for replay and other
groups, and per claimed batch moves the group's cursor and writes (then deletes) a
lease row. Uses the PostgreSQL at ``--url`` (default the shared
127.0.0.1:5432/test) in a schema of its own, dropped afterwards.

Each figure is the best of ``--rounds`` alternating rounds (all rounds printed), since
the machine is shared and noisy.

    .venv/bin/python benchmarks/bench_postgres.py [--messages 50000] [--payload 100] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg

from _common import (
    PUBLISHERS,
    parser,
    plain_messages,
    publish_concurrently,
    report,
    router_end_to_end,
    timed,
    via,
)
from eventmill.pubsub.postgres import PostgresPubSub

RAW_BATCH = 1_000


def bus_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}&table_prefix=b{uuid.uuid4().hex[:6]}_"


async def em_publish(url: str, schema: str, total: int, payload: bytes) -> float:
    bus = PostgresPubSub.from_url(bus_url(url, schema))
    await bus.start()
    per = total // PUBLISHERS
    elapsed = await publish_concurrently(bus, "bench", per, plain_messages(payload))
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
    elapsed = await timed(raw_produce(pool, table, total, payload))
    await pool.close()
    return total / elapsed


async def em_end_to_end(
    url: str, schema: str, total: int, payload: bytes, concurrency: int
) -> float:
    bus = PostgresPubSub.from_url(bus_url(url, schema))
    await bus.start()
    rate = await router_end_to_end(bus, "bench", "g", total, plain_messages(payload), concurrency)
    await bus.close()
    return rate


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

    elapsed = await timed(raw_produce(pool, table, total, payload), consume())
    await consumer.close()
    await pool.close()
    return total / elapsed


async def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (best shown)")
    args = ap.parse_args()
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
        for _ in range(args.rounds):  # alternate, so both sides share the machine's noise
            pub["em"].append(await em_publish(args.url, schema, n, payload))
            pub["raw"].append(await raw_publish(args.url, schema, n, payload))
            e2e["em"].append(await em_end_to_end(args.url, schema, n, payload, args.concurrency))
            e2e["raw"].append(await raw_end_to_end(args.url, schema, n, payload))
        for name, runs in (("publish", pub), ("end-to-end", e2e)):
            rounds = (
                f"   (best of {args.rounds}; eventmill "
                + " / ".join(f"{r:,.0f}" for r in runs["em"])
                + ", raw "
                + " / ".join(f"{r:,.0f}" for r in runs["raw"])
                + ")"
            )
            report(name, max(runs["em"]), max(runs["raw"]), rounds)
        print(f"  end-to-end consumed via {via()}, handler concurrency {args.concurrency}")
        load = os.getloadavg()
        print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (at the start: {load0})")
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
