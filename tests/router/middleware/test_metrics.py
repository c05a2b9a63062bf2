"""HandlerMetrics: outcomes, durations and retries of handlers, on a Prometheus registry."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from eventmill import Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import (
    HandlerMetrics,
    PoisonQueue,
    PoisonQueueConfig,
    Retry,
    RetryConfig,
    Router,
)
from tests.pubsub.conformance import collect, unique
from tests.router.support import FakeClock, running


def _count(registry: CollectorRegistry, outcome: str) -> float:
    name = "eventmill_handler_messages_total"
    return _value(registry, name, handler="billing", outcome=outcome)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_success_retry_and_poison_are_counted_per_handler(bus: MemoryPubSub) -> None:
    registry = CollectorRegistry()
    topic, poison_topic, group = unique("t"), unique("poison"), unique("g")
    poison_sub = await bus.subscribe(poison_topic, group="inspect")
    clock = FakeClock()
    failures: dict[bytes, int] = {b"ok": 0, b"flaky": 1, b"bad": 99}

    async def handle(msg: Message) -> None:
        if failures[msg.payload] > 0:
            failures[msg.payload] -= 1
            raise RuntimeError("not yet")

    metrics = HandlerMetrics(registry)
    router = Router(bus)
    router.add_middleware(
        metrics,
        PoisonQueue(bus, PoisonQueueConfig(topic=poison_topic)),
        Retry(RetryConfig(max_retries=2, jitter=0), sleep=clock.sleep, clock=clock),
        metrics.attempts,
    )
    router.add_handler("billing", topic, handle, group=group)
    async with running(router):
        await bus.publish(topic, Message(b"ok"), Message(b"flaky"), Message(b"bad"))
        await collect(poison_sub, 1)
        async with asyncio.timeout(10):
            while _count(registry, "success") + _count(registry, "poisoned") < 3:
                await asyncio.sleep(0.01)
    assert _count(registry, "success") == 2
    assert _count(registry, "poisoned") == 1
    assert _value(registry, "eventmill_handler_retries_total", handler="billing") == 1 + 2
    duration = "eventmill_handler_duration_seconds_count"
    assert _value(registry, duration, handler="billing", outcome="success") == 2


async def test_a_raising_handler_without_poison_is_failed(bus: MemoryPubSub) -> None:
    registry = CollectorRegistry()
    metrics = HandlerMetrics(registry)

    async def handle(msg: Message) -> None:
        raise ValueError("boom")

    wrapped = metrics(metrics.attempts(handle))
    with pytest.raises(ValueError, match="boom"):
        await wrapped(Message(b"x"))
    failed = _value(registry, "eventmill_handler_messages_total", handler="?", outcome="failed")
    assert failed == 1
    assert _value(registry, "eventmill_handler_retries_total", handler="?") == 0
