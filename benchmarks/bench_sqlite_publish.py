"""Durable publish throughput of sqlite:/// against raw stdlib sqlite3.

Prints msgs/s for 100 concurrent publishers (each awaiting one-message publishes
one after another, so every message is its own durable ``publish`` call) with
16 B and 256 B payloads, for ``synchronous=full`` (the default) and ``normal``,
beside the raw baseline: stdlib ``sqlite3`` inserting the same rows into the same
table with one commit per 1,000 rows, on the same disk and settings. Then, for
information, consume + ack through one group subscription.

    .venv/bin/python benchmarks/bench_sqlite_publish.py [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from _report import record
from eventmill.message import Message
from eventmill.pubsub.sqlite import SQLiteConfig, SQLitePubSub
from eventmill.pubsub.sqlite import _schema as sql

PUBLISHERS = 100


async def bench_eventmill(path: Path, total: int, size: int, synchronous: str) -> float:
    bus = SQLitePubSub(SQLiteConfig(path=str(path), synchronous=synchronous))  # type: ignore[arg-type]
    await bus.start()
    payload = os.urandom(size)
    per = total // PUBLISHERS

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    await bus.publish("bench", Message(payload))  # warm up: file, schema, caches
    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    elapsed = time.perf_counter() - t0
    stats = bus.stats
    await bus.close()
    print(
        f"    ({stats.transactions} transactions, "
        f"{(stats.messages_committed - 1) / max(stats.transactions - 1, 1):.0f} msgs/commit)"
    )
    return per * PUBLISHERS / elapsed


async def bench_consume(path: Path, total: int, size: int) -> float:
    """One group subscription receiving and acking ``total`` messages (flushed)."""
    bus = SQLitePubSub(SQLiteConfig(path=str(path)))
    await bus.start()
    sub = await bus.subscribe("bench", group="bench")
    payload = os.urandom(size)
    for start in range(0, total, 1000):
        await bus.publish("bench", *(Message(payload) for _ in range(min(1000, total - start))))
    t0 = time.perf_counter()
    n = 0
    async for msg in sub:
        msg.ack()
        n += 1
        if n == total:
            break
    await sub.flush()
    elapsed = time.perf_counter() - t0
    await bus.close()
    return total / elapsed


def bench_raw(path: Path, total: int, size: int, synchronous: str) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    for statement in sql.SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)
    payload = os.urandom(size)
    t0 = time.perf_counter()
    for start in range(0, total, 1000):
        rows = [
            ("bench", os.urandom(16).hex(), None, payload) for _ in range(min(1000, total - start))
        ]
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql.INSERT_MESSAGE, rows)
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages per run")
    args = parser.parse_args()
    total = args.messages - args.messages % PUBLISHERS
    print(f"sqlite:/// durable publish, {PUBLISHERS} concurrent publishers, {total} messages")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        for synchronous in ("full", "normal"):
            for size in (16, 256):
                em = asyncio.run(
                    bench_eventmill(
                        Path(tmp, f"em-{synchronous}-{size}.db"), total, size, synchronous
                    )
                )
                raw = bench_raw(Path(tmp, f"raw-{synchronous}-{size}.db"), total, size, synchronous)
                print(
                    f"  synchronous={synchronous:<6} {size:>3} B: eventmill {em:>9,.0f} msgs/s | "
                    f"raw sqlite3 (commit per 1,000) {raw:>9,.0f} msgs/s | ratio {em / raw:.2f}"
                )
                record(
                    "sqlite (bench_sqlite_publish.py)",
                    f"{PUBLISHERS} publishers, synchronous={synchronous}, {size} B",
                    em,
                    raw=raw,
                    raw_label="stdlib sqlite3, one commit per 1,000 rows",
                )
        print("sqlite:/// consume + ack, one group subscription (synchronous=full)")
        for size in (16, 256):
            rate = asyncio.run(bench_consume(Path(tmp, f"consume-{size}.db"), total, size))
            print(f"  {size:>3} B: {rate:>9,.0f} msgs/s")


if __name__ == "__main__":
    main()
