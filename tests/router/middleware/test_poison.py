"""PoisonQueue: failed messages are parked with metadata and acked; never lost."""

from __future__ import annotations

import asyncio

import pytest

from eventmill import HandlerError, InvalidNameError, Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import PoisonQueue, PoisonQueueConfig, Retry, RetryConfig, Router
from eventmill.router.middleware import POISON_HANDLER_KEY, POISON_REASON_KEY, POISON_TOPIC_KEY
from tests.pubsub.conformance import collect, nothing_arrives, unique
from tests.router.support import FakeClock, running


async def test_failed_message_is_parked_with_metadata_after_retries(bus: MemoryPubSub) -> None:
    topic, poison_topic, group = unique("t"), unique("poison"), unique("g")
    poison_sub = await bus.subscribe(poison_topic, group="inspect")
    clock = FakeClock()
    calls = 0

    async def handle(msg: Message) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("customer 42 missing")

    router = Router(bus)
    router.add_middleware(
        PoisonQueue(bus, PoisonQueueConfig(topic=poison_topic)),
        Retry(RetryConfig(max_retries=2, jitter=0), sleep=clock.sleep, clock=clock),
    )
    router.add_handler("billing", topic, handle, group=group)
    sent = Message(b"order-1", {"user_id": "u-7"})
    async with running(router):
        await bus.publish(topic, sent)
        [parked] = await collect(poison_sub, 1)
    assert calls == 3  # parked only after every retry failed
    assert parked.id == sent.id
    assert parked.payload == b"order-1"
    assert parked.metadata["user_id"] == "u-7"
    assert parked.metadata[POISON_REASON_KEY] == "KeyError: 'customer 42 missing'"
    assert parked.metadata[POISON_HANDLER_KEY] == "billing"
    assert parked.metadata[POISON_TOPIC_KEY] == topic
    # The original was acked: its group has nothing left.
    await nothing_arrives(await bus.subscribe(topic, group=group), 0.1)


async def test_should_poison_false_means_nack_and_redelivery(bus: MemoryPubSub) -> None:
    topic, poison_topic = unique("t"), unique("poison")
    poison_sub = await bus.subscribe(poison_topic, group="inspect")
    calls = 0
    second = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            second.set()
            return
        raise TimeoutError("transient")

    cfg = PoisonQueueConfig(
        topic=poison_topic, should_poison=lambda e: not isinstance(e, TimeoutError)
    )
    router = Router(bus)
    router.add_handler("h", topic, handle, group="g", middleware=[PoisonQueue(bus, cfg)])
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(second.wait(), 10)
    assert calls == 2
    await nothing_arrives(poison_sub, 0.1)


async def test_failed_poison_publish_means_nack(bus: MemoryPubSub) -> None:
    topic = unique("t")
    dead = MemoryPubSub()
    await dead.close()
    deliveries = 0
    redelivered = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal deliveries
        deliveries += 1
        if deliveries == 2:
            redelivered.set()
            return
        raise RuntimeError("boom")

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g", middleware=[PoisonQueue(dead)])
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(redelivered.wait(), 10)
    assert deliveries == 2


async def test_poison_publish_failure_is_a_handler_error_outside_a_router() -> None:
    dead = MemoryPubSub()
    await dead.close()

    async def handle(msg: Message) -> None:
        raise RuntimeError("boom")

    msg = Message(b"x")
    with pytest.raises(HandlerError, match="poison"):
        await PoisonQueue(dead)(handle)(msg)
    assert not msg.settled


async def test_long_reasons_are_truncated(bus: MemoryPubSub) -> None:
    poison_topic = unique("poison")
    sub = await bus.subscribe(poison_topic, group="g")

    async def handle(msg: Message) -> None:
        raise ValueError("x" * 5000)

    msg = Message(b"x")
    assert await PoisonQueue(bus, PoisonQueueConfig(topic=poison_topic))(handle)(msg) is None
    assert msg.acked
    [parked] = await collect(sub, 1)
    assert len(parked.metadata[POISON_REASON_KEY]) == 1000
    assert parked.metadata[POISON_HANDLER_KEY] == ""


def test_bad_topic_is_rejected() -> None:
    with pytest.raises(InvalidNameError):
        PoisonQueueConfig(topic="not valid!")


async def test_an_open_circuit_inside_gives_messages_back_instead_of_parking_them(
    bus: MemoryPubSub,
) -> None:
    """The documented order, PoisonQueue outside CircuitBreaker: once the circuit opens,
    the messages it refuses are not the messages' fault, so they are nacked, not
    parked; only the failures of the handler itself are."""
    from eventmill import CircuitOpenError
    from eventmill.router import CircuitBreaker, CircuitBreakerConfig, Handler, HandlerResult

    topic, poison_topic = unique("t"), unique("poison")
    poison_sub = await bus.subscribe(poison_topic, group="inspect")
    given_back = asyncio.Event()

    def observe(handler: Handler) -> Handler:  # outermost: sees what PoisonQueue lets out
        async def observed(msg: Message) -> HandlerResult:
            try:
                return await handler(msg)
            except CircuitOpenError:
                given_back.set()
                raise

        return observed

    async def handle(msg: Message) -> None:
        raise ConnectionError("the database is down")

    poison = PoisonQueue(bus, PoisonQueueConfig(topic=poison_topic))
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2, reset_timeout=60))
    router = Router(bus)
    router.add_handler("h", topic, handle, group="g", middleware=[observe, poison, breaker])
    async with running(router):
        await bus.publish(topic, Message(b"a"), Message(b"b"), Message(b"c"))
        parked = await collect(poison_sub, 2, timeout=10)  # the two real failures
        await asyncio.wait_for(given_back.wait(), 10)  # "c": refused by the open circuit
        await nothing_arrives(poison_sub, 0.2)  # and not parked
    assert {m.payload for m in parked} == {b"a", b"b"}
    assert all("ConnectionError" in m.metadata[POISON_REASON_KEY] for m in parked)
