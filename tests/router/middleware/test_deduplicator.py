"""Deduplicator: one processing per key within the window; failures are not remembered."""

from __future__ import annotations

import asyncio

import pytest

from eventmill import ConfigurationError, Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import (
    Deduplicator,
    DeduplicatorConfig,
    MemorySeenStore,
    Router,
    SeenStore,
)
from tests.pubsub.conformance import nothing_arrives, unique
from tests.router.support import FakeClock, running


class Recorder:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, msg: Message) -> None:
        self.seen.append(msg.payload)


async def test_duplicate_within_window_is_skipped() -> None:
    clock = FakeClock()
    handler = Recorder()
    mw = Deduplicator(DeduplicatorConfig(window=10), store=MemorySeenStore(clock=clock))
    wrapped = mw(handler)
    await wrapped(Message(b"first", id="same"))
    await wrapped(Message(b"again", id="same"))
    await wrapped(Message(b"other", id="different"))
    assert handler.seen == [b"first", b"other"]


async def test_window_expires() -> None:
    clock = FakeClock()
    handler = Recorder()
    store = MemorySeenStore(clock=clock)
    wrapped = Deduplicator(DeduplicatorConfig(window=10), store=store)(handler)
    await wrapped(Message(b"1", id="k"))
    clock.advance(9.9)
    await wrapped(Message(b"2", id="k"))
    clock.advance(0.2)  # 10.1 s after the first: the key expired
    await wrapped(Message(b"3", id="k"))
    assert handler.seen == [b"1", b"3"]
    clock.advance(11)
    await wrapped(Message(b"4", id="other"))
    assert len(store) == 1  # expired keys were dropped


async def test_failed_message_is_processed_again() -> None:
    calls = 0

    async def flaky(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first try fails")

    wrapped = Deduplicator()(flaky)
    with pytest.raises(RuntimeError):
        await wrapped(Message(b"x", id="k"))
    await wrapped(Message(b"x", id="k"))
    await wrapped(Message(b"x", id="k"))
    assert calls == 2


async def test_custom_key_function() -> None:
    handler = Recorder()
    cfg = DeduplicatorConfig(key=lambda m: m.metadata["event_id"])
    wrapped = Deduplicator(cfg)(handler)
    await wrapped(Message(b"a", {"event_id": "e1"}))
    await wrapped(Message(b"b", {"event_id": "e1"}))
    await wrapped(Message(b"c", {"event_id": "e2"}))
    assert handler.seen == [b"a", b"c"]


async def test_memory_store_is_bounded_and_evicts_the_oldest() -> None:
    clock = FakeClock()
    store = MemorySeenStore(max_keys=2, clock=clock)
    assert isinstance(store, SeenStore)
    assert await store.add("a", 60)
    assert await store.add("b", 60)
    assert not await store.add("a", 60)
    assert await store.add("c", 60)  # evicts "a"
    assert len(store) == 2
    assert await store.add("a", 60)  # "a" was forgotten early (documented policy)
    await store.discard("missing")
    with pytest.raises(ConfigurationError):
        MemorySeenStore(max_keys=0)


async def test_duplicates_are_acked_in_a_router(bus: MemoryPubSub) -> None:
    topic, group = unique("t"), unique("g")
    handler = Recorder()
    router = Router(bus)
    router.add_handler("h", topic, handler, group=group, middleware=[Deduplicator()])
    async with running(router):
        await bus.publish(topic, Message(b"1", id="dup"), Message(b"2", id="dup"))
        await bus.publish(topic, Message(b"3", id="unique"))
        while len(handler.seen) < 2:
            await asyncio.sleep(0.01)
    assert handler.seen == [b"1", b"3"]
    await nothing_arrives(await bus.subscribe(topic, group=group), 0.1)


async def test_a_router_level_deduplicator_keeps_keys_per_handler(bus: MemoryPubSub) -> None:
    """One Deduplicator on the router (the documented place): two groups' handlers of
    one topic and the handler of a result forwarded under the same id each process
    every message once; a duplicate is still skipped by each."""
    orders, receipts = unique("orders"), unique("receipts")
    billing, audit, mailer = Recorder(), Recorder(), Recorder()

    async def forward(msg: Message) -> Message:
        await billing(msg)
        return Message(msg.payload, id=msg.id)

    router = Router(bus, bus)
    router.add_middleware(Deduplicator())
    router.add_handler("billing", orders, forward, group="billing", publish_topic=receipts)
    router.add_handler("audit", orders, audit, group="audit")
    router.add_handler("mailer", receipts, mailer, group="mailer")
    async with running(router):
        await bus.publish(orders, Message(b"o1", id="o1"), Message(b"o2", id="o2"))
        await bus.publish(orders, Message(b"o1 again", id="o1"))
        async with asyncio.timeout(10):
            while len(mailer.seen) < 2 or len(audit.seen) < 2:
                await asyncio.sleep(0.01)
        await bus.publish(orders, Message(b"o3", id="o3"))  # after the duplicate
        async with asyncio.timeout(10):
            while len(mailer.seen) < 3 or len(audit.seen) < 3:
                await asyncio.sleep(0.01)
    assert billing.seen == audit.seen == [b"o1", b"o2", b"o3"]
    assert mailer.seen == [b"o1", b"o2", b"o3"]


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        DeduplicatorConfig(window=0)
