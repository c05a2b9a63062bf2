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

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from eventmill.message import Message
from eventmill.pubsub.redis import RedisConfig, RedisPubSub

PUBLISHERS = 100
RAW_BATCH = 1_000

try:
    from eventmill.router import Router, RouterConfig
except ImportError:  # pragma: no cover - the router is a sibling package
    Router = None  # type: ignore[assignment,misc]


def prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}:"


async def em_publish(url: str, total: int, payload: bytes) -> float:
    bus = RedisPubSub(RedisConfig(url=url, prefix=prefix()))
    await bus.start()
    per = total // PUBLISHERS

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    elapsed = time.perf_counter() - t0
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
    t0 = time.perf_counter()
    await raw_produce(client, key, total, payload)
    elapsed = time.perf_counter() - t0
    await client.delete(key)
    await client.aclose()
    return total / elapsed


async def em_end_to_end(url: str, total: int, payload: bytes, concurrency: int) -> float:
    bus = RedisPubSub(RedisConfig(url=url, prefix=prefix()))
    await bus.start()
    per = total // PUBLISHERS
    want = per * PUBLISHERS
    handled = 0
    done = asyncio.Event()

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    if Router is not None:

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
        print("    (eventmill.router not importable: consuming with the subscription directly)")
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
    await bus._client.delete(bus.config.prefix + "bench")
    await bus.close()
    return want / elapsed


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

    t0 = time.perf_counter()
    await asyncio.gather(raw_produce(client, key, total, payload), consume())
    elapsed = time.perf_counter() - t0
    await client.delete(key)
    await client.aclose()
    return total / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=100, help="payload bytes")
    parser.add_argument("--concurrency", type=int, default=8, help="router handler concurrency")
    args = parser.parse_args()
    payload = os.urandom(args.payload)
    n = args.messages
    print(f"redis:// at {args.url}: {n} messages of {args.payload} B, {PUBLISHERS} publishers")

    await em_publish(args.url, 2_000, payload)  # warm up
    em = await em_publish(args.url, n, payload)
    raw = await raw_publish(args.url, n, payload)
    print(f"  publish     eventmill {em:>9,.0f} msgs/s   raw {raw:>9,.0f} msgs/s   {em / raw:.2f}x")

    em = await em_end_to_end(args.url, n, payload, args.concurrency)
    raw = await raw_end_to_end(args.url, n, payload)
    what = "router" if Router is not None else "subscription"
    print(
        f"  end-to-end  eventmill {em:>9,.0f} msgs/s   raw {raw:>9,.0f} msgs/s   {em / raw:.2f}x"
        f"   (eventmill via {what}, concurrency {args.concurrency})"
    )


if __name__ == "__main__":
    asyncio.run(main())
