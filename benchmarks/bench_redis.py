"""Throughput of redis:// against the raw redis-py client doing the same work.

Two figures, each beside the raw baseline and the ratio:

* publish: 100 concurrent publishers, each awaiting one-message ``publish`` calls
  one after another (eventmill coalesces them into pipelines) - raw: one task
  sending ``XADD`` in pipelines of 1,000;
* end-to-end: the same publishers while a Router (group, no-op handler, ack)
  consumes - raw: the pipelined producer while one task loops ``XREADGROUP``
  (COUNT 1000, BLOCK) and ``XACK``\\ s each batch. Clock stops when the last
  message was handled.

Uses the Redis at ``--url`` (default the shared 127.0.0.1:6379) with unique keys,
deleted afterwards.

    .venv/bin/python benchmarks/bench_redis.py [--messages 50000] [--payload 100]
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import redis.asyncio as aioredis

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
from eventmill.pubsub.redis import RedisConfig, RedisPubSub

RAW_BATCH = 1_000


def prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}:"


async def em_publish(url: str, total: int, payload: bytes) -> float:
    bus = RedisPubSub(RedisConfig(url=url, prefix=prefix()))
    await bus.start()
    per = total // PUBLISHERS
    elapsed = await publish_concurrently(bus, "bench", per, plain_messages(payload))
    stats = bus.publish_stats
    print(f"    ({stats.messages / max(stats.round_trips, 1):.0f} messages per round trip)")
    await bus._client.delete(bus.config.prefix + "bench")
    await bus.close()
    return per * PUBLISHERS / elapsed


async def raw_produce(client: aioredis.Redis, key: str, total: int, payload: bytes) -> None:
    for start in range(0, total, RAW_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(RAW_BATCH, total - start)):
                pipe.xadd(key, {"id": os.urandom(16).hex(), "payload": payload})
            await pipe.execute()


async def raw_publish(url: str, total: int, payload: bytes) -> float:
    client = aioredis.Redis.from_url(url)
    key = prefix() + "bench"
    elapsed = await timed(raw_produce(client, key, total, payload))
    await client.delete(key)
    await client.aclose()
    return total / elapsed


async def em_end_to_end(url: str, total: int, payload: bytes, concurrency: int) -> float:
    bus = RedisPubSub(RedisConfig(url=url, prefix=prefix()))
    await bus.start()
    rate = await router_end_to_end(bus, "bench", "g", total, plain_messages(payload), concurrency)
    await bus._client.delete(bus.config.prefix + "bench")
    await bus.close()
    return rate


async def raw_end_to_end(url: str, total: int, payload: bytes) -> float:
    client = aioredis.Redis.from_url(url)
    key = prefix() + "bench"
    await client.xgroup_create(key, "g", id="0", mkstream=True)

    async def consume() -> None:
        handled = 0
        while handled < total:
            resp: Any = await client.xreadgroup("g", "c", {key: ">"}, count=1000, block=1000)
            for _stream, entries in resp or ():
                ids = [entry_id for entry_id, _fields in entries]
                handled += len(ids)
                await client.xack(key, "g", *ids)

    elapsed = await timed(raw_produce(client, key, total, payload), consume())
    await client.delete(key)
    await client.aclose()
    return total / elapsed


async def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    payload = os.urandom(args.payload)
    n = args.messages
    print(f"redis:// at {args.url}: {n} messages of {args.payload} B, {PUBLISHERS} publishers")

    await em_publish(args.url, 2_000, payload)  # warm up
    em = await em_publish(args.url, n, payload)
    raw = await raw_publish(args.url, n, payload)
    report("publish", em, raw)

    em = await em_end_to_end(args.url, n, payload, args.concurrency)
    raw = await raw_end_to_end(args.url, n, payload)
    report("end-to-end", em, raw, f"   (eventmill via {via()}, concurrency {args.concurrency})")


if __name__ == "__main__":
    asyncio.run(main())
