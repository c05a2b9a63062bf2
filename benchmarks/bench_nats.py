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

import asyncio
import contextlib
import uuid
from typing import Any

import nats
from nats.js import api

from _common import (
    PUBLISHERS,
    parser,
    plain_messages,
    publish_concurrently,
    report,
    router_end_to_end,
    timed,
)
from eventmill.message import Message
from eventmill.pubsub.nats import NatsConfig, NatsPubSub

RAW_WINDOW = 1_000


def prefix() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}-"


def em_bus(url: str) -> NatsPubSub:
    return NatsPubSub(NatsConfig.from_url(f"{url}?stream_prefix={prefix()}"))


async def _drop_streams(bus: NatsPubSub) -> None:
    for name in bus._streams.values():
        with contextlib.suppress(Exception):
            await bus._js.delete_stream(name)


async def em_publish(url: str, total: int, payload: bytes) -> float:
    bus = em_bus(url)
    await bus.start()
    await bus.publish("bench", Message(b"warm-up"))  # creates the stream
    per = total // PUBLISHERS
    elapsed = await publish_concurrently(bus, "bench", per, plain_messages(payload))
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
    elapsed = await timed(raw_produce(js, subject, total, payload))
    await js.delete_stream(name)
    await nc.close()
    return total / elapsed


async def em_end_to_end(url: str, total: int, payload: bytes, concurrency: int) -> float:
    bus = em_bus(url)
    await bus.start()
    rate = await router_end_to_end(bus, "bench", "g", total, plain_messages(payload), concurrency)
    await _drop_streams(bus)
    await bus.close()
    return rate


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

    elapsed = await timed(raw_produce(js, subject, total, payload), consume())
    await js.delete_stream(name)
    await nc.close()
    return total / elapsed


async def main() -> None:
    ap = parser(__doc__, concurrency=16)
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    args = ap.parse_args()
    payload = b"x" * args.payload
    print(
        f"nats:// JetStream, {args.messages:,} messages of {args.payload} B, "
        f"{PUBLISHERS} concurrent publishers, file storage (raw: nats-py)"
    )
    report(
        "publish",
        await em_publish(args.url, args.messages, payload),
        await raw_publish(args.url, args.messages, payload),
    )
    report(
        "end-to-end",
        await em_end_to_end(args.url, args.messages, payload, args.concurrency),
        await raw_end_to_end(args.url, args.messages, payload),
    )


if __name__ == "__main__":
    asyncio.run(main())
