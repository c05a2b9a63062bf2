"""A provider's retry storm: duplicate ingest against new ingest, on a store that is
already large.

For each store size (``--stored``, default 10,000 and 1,000,000 events, filled with
one bulk SQL statement, not through the API) and each backend (SQLite temp file with
``synchronous=normal``; PostgreSQL ``test`` database in a throwaway schema, with
``--postgres``), in rounds that alternate:

* **new** — ``insert_many`` in batches of ``--batch`` (default 100, what the ingest
  group commit hands the store under load) of events never stored before;
* **duplicate** — the same number of batches, each event a *new* Event object whose
  ``(source, external_id)`` is that of a distinct event stored in the round before, in
  shuffled order: every item of every batch is answered with the stored event.

Prints events/s of each (median over ``--rounds``, default 5) and the ratio
duplicate / new: the median of each round's ratio (new and duplicate measured back to
back), and the same by this process's CPU time, which other load on a shared machine
disturbs less (for SQLite it is nearly all the work; PostgreSQL's server works outside
it). A duplicate lookup that scanned the store would cost more at every size step; one
that seeks costs the same at 10k and at 1M.

    .venv/bin/python benchmarks/bench_duplicates.py [--stored 10000 1000000]
        [--events 20000] [--batch 100] [--rounds 5] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _payloads import razorpay_payment_captured
from eventmill.events import Event
from eventmill.store import Store, open_store

PG = "postgresql://postgres@127.0.0.1:5432/test"

_FILL_PAYLOAD = '{"entity":"event","event":"payment.captured","payload":{"payment":{"entity":{"id":"pay_fill","amount":50000,"currency":"INR","status":"captured","method":"card","notes":{"user_id":"user_1"}}}}}'  # noqa: E501
_FILL_METADATA = '{"version":"1.0","correlation_id":"","trace_id":"","headers":{},"retry_count":0}'

_SQLITE_FILL = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO events (id, source, external_id, event_name, user_id, payload, metadata,
                    created_at, processed_at, stored_at, published_at)
SELECT 'evt_fill_' || i, 'razorpay', 'fill_' || i, 'razorpay.payment.captured',
       'user_' || (i % 1000), '{_FILL_PAYLOAD}', '{_FILL_METADATA}',
       strftime('%Y-%m-%d %H:%M:%f000', 1600000000 + i, 'unixepoch'), NULL,
       strftime('%Y-%m-%d %H:%M:%f000', 1600000000 + i, 'unixepoch'),
       strftime('%Y-%m-%d %H:%M:%f000', 1600000000 + i, 'unixepoch')
FROM n
"""

_PG_FILL = f"""
INSERT INTO events (id, source, external_id, event_name, user_id, payload, metadata,
                    created_at, processed_at, stored_at, published_at)
SELECT 'evt_fill_' || i, 'razorpay', 'fill_' || i, 'razorpay.payment.captured',
       'user_' || (i % 1000), '{_FILL_PAYLOAD}'::json, '{_FILL_METADATA}'::json,
       to_timestamp(1600000000 + i), NULL, to_timestamp(1600000000 + i),
       to_timestamp(1600000000 + i)
FROM generate_series(1, :count) AS i
"""


async def fill(store: Store, count: int) -> float:
    """Store ``count`` events with one SQL statement; return the seconds it took."""
    sql = _SQLITE_FILL if store.dialect == "sqlite" else _PG_FILL
    t = time.perf_counter()
    async with store.transaction(write=True) as conn:
        await conn.exec_driver_sql(sql.replace(":count", str(int(count))))
        if store.dialect == "postgresql":
            await conn.exec_driver_sql("ANALYZE events")
    return time.perf_counter() - t


def make_event(i: int, key: str) -> tuple[Event, str]:
    body: dict[str, Any] = razorpay_payment_captured(i)
    event = Event(
        event_name="razorpay.payment.captured",
        source="razorpay",
        user_id=f"user_{i % 1000}",
        payload=body,
    )
    return event, key


async def timed_batches(
    store: Store, items: list[tuple[Event, str]], batch: int
) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds to store ``items`` in batches."""
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(items), batch):
        await store.events.insert_many(items[start : start + batch])
    return time.perf_counter() - wall, time.process_time() - cpu


async def bench(label: str, store: Store, stored: int, n: int, batch: int, rounds: int) -> None:
    seconds = await fill(store, stored)
    print(f"{label}, {stored:,} events stored (filled in {seconds:.1f} s)")
    new_rates: list[float] = []
    dup_rates: list[float] = []
    new_cpus: list[float] = []
    dup_cpus: list[float] = []
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    rng = random.Random(7)
    for r in range(rounds):
        fresh = [make_event(i, f"round{r}-{i}") for i in range(n)]
        new_wall, new_cpu = await timed_batches(store, fresh, batch)
        keys = [key for _, key in fresh]
        rng.shuffle(keys)
        again = [make_event(i, key) for i, key in enumerate(keys)]
        dup_wall, dup_cpu = await timed_batches(store, again, batch)
        new_rates.append(n / new_wall)
        dup_rates.append(n / dup_wall)
        new_cpus.append(new_cpu / n * 1e6)
        dup_cpus.append(dup_cpu / n * 1e6)
        ratios.append(new_wall / dup_wall)
        cpu_ratios.append(new_cpu / dup_cpu)
        check = await store.events.insert_many(again[:batch])
        assert all(isinstance(x, tuple) and not x[1] for x in check), "not duplicates"
    new, dup = statistics.median(new_rates), statistics.median(dup_rates)
    new_us, dup_us = statistics.median(new_cpus), statistics.median(dup_cpus)
    print(
        f"  new        {new:>10,.0f} events/s  {new_us:5.1f} us CPU/event"
        f"   (rounds: {_rates(new_rates)})"
    )
    print(
        f"  duplicate  {dup:>10,.0f} events/s  {dup_us:5.1f} us CPU/event"
        f"   (rounds: {_rates(dup_rates)})"
    )
    print(
        f"  duplicate / new = {statistics.median(ratios):.2f} (median of the rounds' ratios; "
        f"by this process's CPU time {statistics.median(cpu_ratios):.2f})"
        f"   batches of {batch}, {n:,} events a round"
    )


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{x:,.0f}" for x in rates)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def main(args: argparse.Namespace) -> None:
    for stored in args.stored:
        with tempfile.TemporaryDirectory() as tmp:
            async with await open_store(f"sqlite:///{Path(tmp) / 'bench.db'}") as store:
                await bench("sqlite", store, stored, args.events, args.batch, args.rounds)
        if not args.postgres:
            continue
        if not reachable("127.0.0.1", 5432):
            print("postgresql: not reachable at 127.0.0.1:5432, skipped", file=sys.stderr)
            continue
        schema = f"em_bench_{uuid.uuid4().hex[:12]}"
        store = await open_store(f"{PG}?schema={schema}")
        try:
            await bench("postgresql", store, stored, args.events, args.batch, args.rounds)
        finally:
            async with store.transaction(write=True) as conn:
                await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--stored", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--events", type=int, default=20_000, help="events per round")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also PostgreSQL")
    asyncio.run(main(parser.parse_args()))
