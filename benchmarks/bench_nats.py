"""Throughput of nats:// (JetStream) against the raw nats-py client doing the same work.

Two figures, each beside the raw baseline and the ratio:

* publish: 100 concurrent publishers, each awaiting one-message ``publish`` calls
  one after another (their PubAcks are awaited together on one connection) - raw:
  one task calling ``js.publish_async`` in windows of 1,000 and gathering the
  PubAck futures of each window;
* end-to-end: the same publishers while a Router (group, no-op handler, ack)
  consumes - raw: the windowed ``publish_async`` producer while one task loops
  ``fetch(1000)`` on a durable pull consumer and acks every message. The clock
  stops when the last message was handled.

Uses the JetStream server at ``--url`` (default the shared 127.0.0.1:4222) with
unique stream names, deleted afterwards. One run; the machine is shared, so
figures are noisy.

    .venv/bin/python benchmarks/bench_nats.py [--messages 50000] [--payload 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from typing import Any

import nats
from nats.js import api

from eventmill.message import Message
from eventmill.pubsub.nats import NatsConfig, NatsPubSub

PUBLISHERS = 100
RAW_WINDOW = 1_000

try:
    from eventmill.router import Router, RouterConfig
except ImportError:  # pragma: no cover - the router is a sibling package
    Router = None  # type: ignore[assignment,misc]


def prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}-"


async def _drop_streams(bus: NatsPubSub) -> None:
    for name in bus._streams.values():
        with contextlib.suppress(Exception):
            await bus._js.delete_stream(name)


async def em_publish(url: str, total: int, payload: bytes) -> float:
    bus = NatsPubSub(NatsConfig.from_url(f"{url}?stream_prefix={prefix()}"))
    await bus.start()
    await bus.publish("bench", Message(b"warm-up"))  # creates the stream
    per = total // PUBLISHERS

    async def publisher() -> None:
        for _ in range(per):
            await bus.publish("bench", Message(payload))

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    elapsed = time.perf_counter() - t0
    await _drop_streams(bus)
    await bus.close()
    return per * PUBLISHERS / elapsed


async def raw_produce(js: Any, subject: str, total: int, payload: bytes) -> None:
    for start in range(0, total, RAW_WINDOW):
        futures = [
            await js.publish_async(subject, payload) for _ in range(min(RAW_WINDOW, total - start))
        ]
        await asyncio.gather(*futures)


async def raw_setup(url: str) -> tuple[Any, Any, str, str]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = prefix() + "raw"
    subject = f"{name}.bench"
    await js.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE)
    return nc, js, name, subject


async def raw_publish(url: str, total: int, payload: bytes) -> float:
    nc, js, name, subject = await raw_setup(url)
    t0 = time.perf_counter()
    await raw_produce(js, subject, total, payload)
    elapsed = time.perf_counter() - t0
    await js.delete_stream(name)
    await nc.close()
    return total / elapsed


async def em_end_to_end(url: str, total: int, payload: bytes, concurrency: int) -> float:
    bus = NatsPubSub(NatsConfig.from_url(f"{url}?stream_prefix={prefix()}"))
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
    await _drop_streams(bus)
    await bus.close()
    return want / elapsed


async def raw_end_to_end(url: str, total: int, payload: bytes) -> float:
    nc, js, name, subject = await raw_setup(url)
    psub = await js.pull_subscribe(subject, durable="g", stream=name)

    async def consume() -> None:
        handled = 0
        while handled < total:
            try:
                batch = await psub.fetch(1000, timeout=1)
            except TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
            handled += len(batch)

    t0 = time.perf_counter()
    await asyncio.gather(raw_produce(js, subject, total, payload), consume())
    elapsed = time.perf_counter() - t0
    await js.delete_stream(name)
    await nc.close()
    return total / elapsed


def line(label: str, ours: float, raw: float) -> None:
    print(f"  {label:<11} eventmill {ours:>9,.0f} msg/s   raw nats-py {raw:>9,.0f} msg/s", end="")
    print(f"   ratio {ours / raw:.2f}x")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=100, help="payload size in bytes")
    parser.add_argument("--concurrency", type=int, default=16, help="router handler workers")
    args = parser.parse_args()
    payload = b"x" * args.payload
    print(
        f"nats:// JetStream, {args.messages:,} messages of {args.payload} B, "
        f"{PUBLISHERS} concurrent publishers, file storage"
    )
    line(
        "publish",
        await em_publish(args.url, args.messages, payload),
        await raw_publish(args.url, args.messages, payload),
    )
    line(
        "end-to-end",
        await em_end_to_end(args.url, args.messages, payload, args.concurrency),
        await raw_end_to_end(args.url, args.messages, payload),
    )


if __name__ == "__main__":
    asyncio.run(main())
