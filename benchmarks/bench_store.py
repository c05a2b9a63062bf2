"""Event codec and event store throughput.

Prints ops/s for:

* codec — ``Event.to_message()`` and ``Event.from_message()`` on a real-shaped Razorpay
  payment event (~1.3 KB JSON); baseline: ``orjson.dumps`` / ``orjson.loads`` of the same
  dict (no validation).
* store, per backend (SQLite temp file with ``synchronous=normal``; PostgreSQL ``test``
  database in a throwaway schema, skipped when unreachable):
  - ``insert`` one at a time, sequentially;
  - ``insert`` from 50 concurrent tasks;
  - ``insert_many`` in batches of 100 (group commit);
  - ``query`` pages of 100 by cursor through everything inserted.

On a shared machine figures are noisy.

    .venv/bin/python benchmarks/bench_store.py [--events 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from _payloads import razorpay_payment_captured
from _report import record
from eventmill.events import Event
from eventmill.store import Store, open_store

PG = "postgresql://postgres@127.0.0.1:5432/test"


def razorpay_body(i: int) -> dict[str, Any]:
    return razorpay_payment_captured(i, users=100)


def make_event(i: int) -> Event:
    return Event(
        event_name="razorpay.payment.captured",
        source="razorpay",
        user_id=f"user_{i % 100}",
        payload=razorpay_body(i),
    )


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} /s"


def bench_codec(n: int) -> None:
    event = make_event(1)
    as_dict = event.to_dict()
    t = time.perf_counter()
    for _ in range(n):
        event.to_message()
    enc = time.perf_counter() - t
    msg = event.to_message()
    t = time.perf_counter()
    for _ in range(n):
        Event.from_message(msg)
    dec = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n):
        orjson.dumps(as_dict, option=orjson.OPT_UTC_Z)
    base_enc = time.perf_counter() - t
    raw = msg.payload
    t = time.perf_counter()
    for _ in range(n):
        orjson.loads(raw)
    base_dec = time.perf_counter() - t
    print(f"codec ({len(raw)} B event)")
    print(f"  to_message     {rate(n, enc)}   baseline orjson.dumps {rate(n, base_enc)}")
    print(f"  from_message   {rate(n, dec)}   baseline orjson.loads {rate(n, base_dec)}")
    for what, ours, base, label in (
        ("Event.to_message", enc, base_enc, "orjson.dumps"),
        ("Event.from_message", dec, base_dec, "orjson.loads"),
    ):
        record(
            "codec (bench_store.py)", what, n / ours, unit="ops/s", raw=n / base, raw_label=label
        )


async def bench_store(label: str, store: Store, n: int) -> None:
    events = [make_event(i) for i in range(n * 4)]
    t = time.perf_counter()
    for i in range(n):
        await store.events.insert(events[i], f"seq-{i}")
    seq = time.perf_counter() - t

    sem = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with sem:
            await store.events.insert(events[i], f"conc-{i}")

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n, 2 * n)))
    conc = time.perf_counter() - t

    t = time.perf_counter()
    for start in range(2 * n, 4 * n, 100):
        await store.events.insert_many(
            [(events[i], f"many-{i}") for i in range(start, start + 100)]
        )
    many = time.perf_counter() - t

    t = time.perf_counter()
    read = 0
    cursor = None
    while True:
        page = await store.events.query(after=cursor, limit=100)
        read += len(page.events)
        cursor = page.next_cursor
        if not page.has_more:
            break
    query = time.perf_counter() - t
    print(f"store {label}")
    print(f"  insert sequential     {rate(n, seq)}")
    print(f"  insert 50 concurrent  {rate(n, conc)}")
    print(f"  insert_many x100      {rate(2 * n, many)}")
    print(f"  query pages of 100    {rate(read, query)}  ({read} events)")
    for what, count, seconds in (
        ("insert sequential", n, seq),
        ("insert 50 concurrent", n, conc),
        ("insert_many x100", 2 * n, many),
        ("query pages of 100", read, query),
    ):
        record(
            f"store {label} (bench_store.py)",
            what,
            count / seconds,
            unit="events/s",
            note="no baseline",
        )


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def main(n: int) -> None:
    bench_codec(20_000)
    with tempfile.TemporaryDirectory() as tmp:
        async with await open_store(f"sqlite:///{Path(tmp) / 'bench.db'}") as store:
            await bench_store("sqlite (synchronous=normal)", store, n)
    if not reachable("127.0.0.1", 5432):
        print("store postgresql: not reachable at 127.0.0.1:5432, skipped")
        return
    schema = f"em_bench_{uuid.uuid4().hex[:12]}"
    store = await open_store(f"{PG}?schema={schema}")
    try:
        await bench_store("postgresql", store, n)
    finally:
        async with store.transaction(write=True) as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    asyncio.run(main(parser.parse_args().events))
