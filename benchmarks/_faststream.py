"""FastStream (PyPI ``faststream``) doing the broker workloads of :mod:`_harness`.

Written as its documentation shows a user would: a broker object, ``broker.publish``
awaited per message, and a ``@broker.subscriber`` handler taking the body, with
``ack_policy=AckPolicy.ACK`` (ack each message after its handler returned). Access
logging is off (``logger=None``), as eventmill's Router logs nothing per message.
Settings that differ from FastStream's defaults, to match eventmill's:

* Redis: a stream consumer group (``StreamSub(group=..., consumer=...)``) reading
  ``max_records=100`` per ``XREADGROUP`` (the default reads the whole backlog at once).
* NATS: a JetStream stream (``JStream``) and a durable pull consumer reading
  ``PullSub(batch_size=100)`` (the default fetches one message per request);
  ``broker.publish(..., stream=...)`` so that each publish awaits its PubAck.
* Kafka: ``acks="all"``; topics of 4 partitions made beforehand; a group consumer
  with ``auto_offset_reset="earliest"``.

FastStream has no PostgreSQL, SQLite or in-process broker to compare with.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
from typing import Any

from _harness import PUBLISHERS, Tally, timed_concurrent, timed_publishes, unique

BACKLOG_TASKS = PUBLISHERS


def version() -> str:
    return importlib.metadata.version("faststream")


async def _backlog(n: int, publish: Any) -> None:
    """Publish ``n`` messages with :data:`BACKLOG_TASKS` tasks (not timed)."""
    per, extra = divmod(n, BACKLOG_TASKS)

    async def one(k: int) -> None:
        for _ in range(k):
            await publish()

    await asyncio.gather(*(one(per + (i < extra)) for i in range(BACKLOG_TASKS)))


async def _warm(broker: Any, publish: Any, tally: Tally) -> None:
    await broker.start()
    await publish(b"warm-up")
    while tally.n < 1:
        await asyncio.sleep(0.001)


# -- Redis ----------------------------------------------------------------------------------


class FastStreamRedis:
    label = "FastStream RedisBroker, stream consumer group"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def _broker(self) -> Any:
        from faststream.redis import RedisBroker

        return RedisBroker(self.url, logger=None)

    def _subscribe(self, broker: Any, stream: str, tally: Tally) -> None:
        from faststream import AckPolicy
        from faststream.redis import StreamSub

        @broker.subscriber(  # type: ignore[untyped-decorator]
            stream=StreamSub(stream, group="g", consumer="c1", max_records=100),
            ack_policy=AckPolicy.ACK,
        )
        async def handle(body: bytes) -> None:
            tally.hit()

    async def _drop(self, stream: str) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        await client.delete(stream)
        await client.aclose()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        broker = self._broker()
        stream = self.prefix + unique("fs-a")
        tally = Tally(n + 1)
        self._subscribe(broker, stream, tally)
        try:
            await _warm(broker, lambda body: broker.publish(body, stream=stream), tally)
            return await timed_publishes(n, lambda: broker.publish(payload, stream=stream), tally)
        finally:
            await broker.stop()
            await self._drop(stream)

    async def concurrent(self, n: int, payload: bytes) -> float:
        broker = self._broker()
        stream = self.prefix + unique("fs-b")
        try:
            await broker.start()
            await broker.publish(b"warm-up", stream=stream)
            return await timed_concurrent(n, lambda: broker.publish(payload, stream=stream))
        finally:
            await broker.stop()
            await self._drop(stream)

    async def drain(self, n: int, payload: bytes) -> float:
        import redis.asyncio as aioredis

        stream = self.prefix + unique("fs-c")
        # FastStream creates a group at "$" (new entries only); the group that drains
        # a backlog is made beforehand at "0", as an operator would.
        client = aioredis.Redis.from_url(self.url)
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
        await client.aclose()
        producer = self._broker()
        await producer.start()
        await _backlog(n, lambda: producer.publish(payload, stream=stream))
        await producer.stop()
        broker = self._broker()
        tally = Tally(n)
        self._subscribe(broker, stream, tally)
        try:
            await broker.start()
            await tally.wait()
            return tally.drain_rate()
        finally:
            await broker.stop()
            await self._drop(stream)


# -- NATS JetStream ----------------------------------------------------------------------------


class FastStreamNats:
    label = "FastStream NatsBroker, JetStream durable pull consumer"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def _broker(self) -> Any:
        from faststream.nats import NatsBroker

        return NatsBroker(self.url, logger=None)

    def _names(self, kind: str) -> tuple[str, str]:
        name = self.prefix + unique(kind)
        return name, f"{name}.bench"

    def _declare(self, broker: Any, name: str, subject: str) -> None:
        from faststream.nats import JStream

        broker.publisher(subject, stream=JStream(name, subjects=[subject]))

    def _subscribe(self, broker: Any, name: str, subject: str, tally: Tally) -> None:
        from faststream import AckPolicy
        from faststream.nats import JStream, PullSub

        @broker.subscriber(  # type: ignore[untyped-decorator]
            subject,
            stream=JStream(name, subjects=[subject]),
            durable="g",
            pull_sub=PullSub(batch_size=100),
            ack_policy=AckPolicy.ACK,
        )
        async def handle(body: bytes) -> None:
            tally.hit()

    async def _drop(self, name: str) -> None:
        import nats

        nc = await nats.connect(self.url)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
        await nc.close()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        broker = self._broker()
        name, subject = self._names("fs-a")
        tally = Tally(n + 1)
        self._subscribe(broker, name, subject, tally)
        try:
            await _warm(broker, lambda body: broker.publish(body, subject, stream=name), tally)
            return await timed_publishes(
                n, lambda: broker.publish(payload, subject, stream=name), tally
            )
        finally:
            await broker.stop()
            await self._drop(name)

    async def concurrent(self, n: int, payload: bytes) -> float:
        broker = self._broker()
        name, subject = self._names("fs-b")
        self._declare(broker, name, subject)
        try:
            await broker.start()
            await broker.publish(b"warm-up", subject, stream=name)
            return await timed_concurrent(n, lambda: broker.publish(payload, subject, stream=name))
        finally:
            await broker.stop()
            await self._drop(name)

    async def drain(self, n: int, payload: bytes) -> float:
        name, subject = self._names("fs-c")
        producer = self._broker()
        self._declare(producer, name, subject)
        await producer.start()
        await _backlog(n, lambda: producer.publish(payload, subject, stream=name))
        await producer.stop()
        broker = self._broker()
        tally = Tally(n)
        self._subscribe(broker, name, subject, tally)
        try:
            await broker.start()
            await tally.wait()
            return tally.drain_rate()
        finally:
            await broker.stop()
            await self._drop(name)


# -- Kafka -------------------------------------------------------------------------------------


class FastStreamKafka:
    label = "FastStream KafkaBroker, group consumer"

    def __init__(self, bootstrap: str, partitions: int = 4) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions

    def _broker(self) -> Any:
        from faststream.kafka import KafkaBroker

        return KafkaBroker(self.bootstrap, acks="all", logger=None)

    async def _topic(self, kind: str) -> str:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        topic = unique(kind)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, self.partitions, 1)])
        finally:
            await admin.close()
        return topic

    def _subscribe(self, broker: Any, topic: str, tally: Tally) -> None:
        from faststream import AckPolicy

        @broker.subscriber(  # type: ignore[untyped-decorator]
            topic,
            group_id=unique("g"),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
        )
        async def handle(body: bytes) -> None:
            tally.hit()

    async def one_publisher(self, n: int, payload: bytes) -> float:
        topic = await self._topic("fs-a")
        broker = self._broker()
        tally = Tally(n + 1)
        self._subscribe(broker, topic, tally)
        try:
            await _warm(broker, lambda body: broker.publish(body, topic), tally)
            return await timed_publishes(n, lambda: broker.publish(payload, topic), tally)
        finally:
            await broker.stop()

    async def concurrent(self, n: int, payload: bytes) -> float:
        topic = await self._topic("fs-b")
        broker = self._broker()
        try:
            await broker.start()
            await broker.publish(b"warm-up", topic)
            return await timed_concurrent(n, lambda: broker.publish(payload, topic))
        finally:
            await broker.stop()

    async def drain(self, n: int, payload: bytes) -> float:
        topic = await self._topic("fs-c")
        producer = self._broker()
        await producer.start()
        await _backlog(n, lambda: producer.publish(payload, topic))
        await producer.stop()
        broker = self._broker()
        tally = Tally(n)
        self._subscribe(broker, topic, tally)
        try:
            await broker.start()
            await tally.wait()
            return tally.drain_rate()
        finally:
            await broker.stop()
