"""memory:// runs the conformance suite, plus its own buffer-policy tests."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Self

import pytest

from eventmill import BufferFullError, ClosedError, ConfigurationError, Message, open_pubsub
from eventmill.pubsub.base import Abortable, Capabilities, PubSub, Subscription
from eventmill.pubsub.memory import MemoryConfig, MemoryPubSub
from tests.pubsub.conformance import ConformanceSuite, Harness, collect, unique


class _Client:
    """One "process" using the shared in-memory bus: what it opened closes (or aborts)
    with it, and the bus and its groups stay for the others."""

    capabilities = MemoryPubSub.capabilities

    def __init__(self, bus: MemoryPubSub) -> None:
        self._bus = bus
        self._subs: list[Subscription] = []
        self._closed = False

    async def publish(self, topic: str, *messages: Message) -> None:
        if self._closed:
            raise ClosedError("memory:// client is closed")
        await self._bus.publish(topic, *messages)

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        sub = await self._bus.subscribe(topic, group=group)
        self._subs.append(sub)
        return sub

    async def close(self) -> None:
        self._closed = True
        for sub in self._subs:
            await sub.close()

    async def abort(self) -> None:
        self._closed = True
        for sub in self._subs:
            assert isinstance(sub, Abortable)
            await sub.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class MemoryHarness(Harness):
    def __init__(self) -> None:
        super().__init__()
        self._shared = MemoryPubSub()
        self._configured: dict[str, MemoryPubSub] = {}

    @property
    def capabilities(self) -> Capabilities:
        return self._shared.capabilities

    async def _open(self) -> PubSub:
        return _Client(self._shared)

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        url = "memory://?" + "&".join(f"{k}={v}" for k, v in sorted(options.items()))
        bus = self._configured.get(url)
        if bus is None:
            bus = self._configured[url] = MemoryPubSub.from_url(url)
        return _Client(bus)

    async def crash(self, ps: PubSub) -> None:
        assert isinstance(ps, _Client)
        await ps.abort()

    async def aclose(self) -> None:
        await super().aclose()
        await self._shared.close()
        for bus in self._configured.values():
            await bus.close()


class TestMemoryConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        h = MemoryHarness()
        yield h
        await h.aclose()


async def test_open_pubsub_parses_options() -> None:
    bus = await open_pubsub("memory://?buffer_size=3&when_full=raise")
    assert isinstance(bus, MemoryPubSub)
    assert bus.config == MemoryConfig(buffer_size=3, when_full="raise")
    await bus.close()


@pytest.mark.parametrize(
    "url",
    [
        "memory://?buffer_size=0",
        "memory://?buffer_size=x",
        "memory://?when_full=drop",
        "memory://?x=1",
    ],
)
async def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        await open_pubsub(url)


async def test_full_buffer_raises_and_publishes_nothing() -> None:
    bus = MemoryPubSub(MemoryConfig(buffer_size=3, when_full="raise"))
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, *(Message(b"x") for _ in range(2)))
    with pytest.raises(BufferFullError, match="full"):
        await bus.publish(topic, Message(b"a"), Message(b"b"))
    await bus.publish(topic, Message(b"fits"))
    got = await collect(sub, 3)
    assert [m.payload for m in got] == [b"x", b"x", b"fits"]
    await bus.close()


async def test_full_buffer_blocks_publisher_until_room() -> None:
    bus = MemoryPubSub(MemoryConfig(buffer_size=2))
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, Message(b"1"), Message(b"2"))
    blocked = asyncio.create_task(bus.publish(topic, Message(b"3")))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "publisher should wait while the buffer is full"
    await collect(sub, 1)
    await asyncio.wait_for(blocked, 1)
    got = await collect(sub, 2)
    assert [m.payload for m in got] == [b"2", b"3"]
    await bus.close()


async def test_topic_without_subscribers_accepts_publishes() -> None:
    bus = MemoryPubSub()
    await bus.publish(unique("t"), Message(b"nobody listens"))
    await bus.close()


async def test_a_backlog_gives_the_garbage_collector_nothing_to_walk() -> None:
    """Queued messages are kept as tuples of strings and bytes, which the collector
    stops tracking: a backlog of a million costs no collection time."""
    bus = MemoryPubSub(MemoryConfig(buffer_size=20_000))
    topic = unique("t")
    sub = await bus.subscribe(topic, group=unique("g"))
    await bus.subscribe(topic)  # an ephemeral subscriber queues them too
    gc.collect()
    before = len(gc.get_objects())
    for i in range(10_000):
        await bus.publish(topic, Message(b"x", {"i": str(i)} if i % 2 else None))
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    got = await collect(sub, 10_000)
    assert [m.metadata for m in got[:2]] == [{}, {"i": "1"}]
    await bus.close()


async def test_each_delivery_has_metadata_of_its_own() -> None:
    bus = MemoryPubSub()
    topic = unique("t")
    first = await bus.subscribe(topic, group=unique("g"))
    second = await bus.subscribe(topic, group=unique("g"))
    sent = Message(b"x", {"k": "v"})
    await bus.publish(topic, sent)
    sent.metadata["k"] = "changed by the publisher after publish"
    [a] = await collect(first, 1)
    a.metadata["k"] = "changed by the first group"
    [b] = await collect(second, 1)
    assert b.metadata == {"k": "v"}
    a2 = Message(b"y", {"k": "v"})
    await bus.publish(topic, a2)
    [c] = await collect(first, 1, ack=False)
    c.metadata["k"] = "changed before a nack"
    c.nack()
    [again] = await collect(first, 1)
    assert again.metadata == {"k": "changed before a nack"}, "a nack requeues what was handed out"
    await bus.close()
