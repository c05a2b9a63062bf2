"""Throttle: at most `count` handler calls start within any `period` window."""

from __future__ import annotations

import asyncio

import pytest

from eventmill import ConfigurationError, Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import Router, Throttle, ThrottleConfig
from tests.pubsub.conformance import unique
from tests.router.support import FakeClock, running


def max_in_window(times: list[float], period: float) -> int:
    return max(sum(1 for u in times if t <= u < t + period) for t in times)


async def test_rate_is_limited_per_period() -> None:
    clock = FakeClock()
    started: list[float] = []

    async def handle(msg: Message) -> None:
        started.append(clock())

    wrapped = Throttle(ThrottleConfig(count=3, period=1.0), sleep=clock.sleep, clock=clock)(handle)
    for _ in range(10):
        await wrapped(Message(b"x"))
    assert len(started) == 10
    assert max_in_window(started, 1.0) == 3
    assert started[-1] - started[0] == pytest.approx(3.0)  # 10 calls at 3/s span 3 periods
    assert all(s > 0 for s in clock.sleeps)


async def test_concurrent_callers_share_the_limit() -> None:
    clock = FakeClock()
    started: list[float] = []

    async def handle(msg: Message) -> None:
        started.append(clock())
        await asyncio.sleep(0)

    wrapped = Throttle(ThrottleConfig(count=2, period=0.5), sleep=clock.sleep, clock=clock)(handle)
    await asyncio.gather(*(wrapped(Message(b"x")) for _ in range(9)))
    assert len(started) == 9
    assert max_in_window(started, 0.5) == 2


async def test_handlers_are_throttled_separately_in_a_router(bus: MemoryPubSub) -> None:
    clock = FakeClock()
    started: dict[str, list[float]] = {"a": [], "b": []}
    done = asyncio.Event()

    def make(name: str):  # type: ignore[no-untyped-def]
        async def handle(msg: Message) -> None:
            started[name].append(clock())
            if sum(map(len, started.values())) == 12:
                done.set()

        return handle

    router = Router(bus)
    router.add_middleware(
        Throttle(ThrottleConfig(count=2, period=1.0), sleep=clock.sleep, clock=clock)
    )
    ta, tb = unique("a"), unique("b")
    router.add_handler("a", ta, make("a"), group="g", concurrency=3)
    router.add_handler("b", tb, make("b"), group="g")
    async with running(router):
        await bus.publish(ta, *(Message(b"x") for _ in range(6)))
        await bus.publish(tb, *(Message(b"x") for _ in range(6)))
        await asyncio.wait_for(done.wait(), 10)
    for times in started.values():
        assert len(times) == 6
        assert max_in_window(times, 1.0) == 2


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        ThrottleConfig(count=0)
    with pytest.raises(ConfigurationError):
        ThrottleConfig(period=0)
