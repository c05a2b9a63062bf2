"""Retry: attempt counts and backoff bounds, measured with a fake clock and sleep."""

from __future__ import annotations

import asyncio
import random

import pytest

from eventmill import ConfigurationError, Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import Retry, RetryConfig, Router
from tests.pubsub.conformance import nothing_arrives, unique
from tests.router.support import FakeClock, running


class Flaky:
    """A handler failing its first ``failures`` calls."""

    def __init__(self, failures: int, exc: Exception | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.exc = exc or ConnectionError("downstream unavailable")

    async def __call__(self, msg: Message) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc


def retry(clock: FakeClock, rand: float = 0.5, **config: object) -> Retry:
    return Retry(
        RetryConfig(**config),  # type: ignore[arg-type]
        sleep=clock.sleep,
        clock=clock,
        random=lambda: rand,
    )


async def test_succeeds_after_failures_with_exponential_intervals() -> None:
    clock = FakeClock()
    handler = Flaky(failures=3)
    wrapped = retry(clock, max_retries=5, initial_interval=0.1, multiplier=2.0, jitter=0.0)(handler)
    await wrapped(Message(b"x"))
    assert handler.calls == 4
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4])


async def test_gives_up_after_max_retries_with_the_last_exception() -> None:
    clock = FakeClock()
    handler = Flaky(failures=100)
    wrapped = retry(clock, max_retries=3, initial_interval=1.0, jitter=0.0)(handler)
    with pytest.raises(ConnectionError, match="downstream"):
        await wrapped(Message(b"x"))
    assert handler.calls == 4
    assert len(clock.sleeps) == 3


async def test_zero_retries_calls_once() -> None:
    clock = FakeClock()
    handler = Flaky(failures=1)
    with pytest.raises(ConnectionError):
        await retry(clock, max_retries=0)(handler)(Message(b"x"))
    assert handler.calls == 1
    assert clock.sleeps == []


async def test_interval_is_capped_by_max_interval() -> None:
    clock = FakeClock()
    handler = Flaky(failures=4)
    wrapped = retry(
        clock, max_retries=4, initial_interval=1.0, multiplier=10.0, max_interval=5.0, jitter=0.0
    )(handler)
    await wrapped(Message(b"x"))
    assert clock.sleeps == pytest.approx([1.0, 5.0, 5.0, 5.0])


async def test_max_elapsed_time_stops_retrying() -> None:
    clock = FakeClock()
    handler = Flaky(failures=100)
    wrapped = retry(
        clock, max_retries=10, initial_interval=1.0, multiplier=2.0, max_elapsed_time=3.5, jitter=0
    )(handler)
    with pytest.raises(ConnectionError):
        await wrapped(Message(b"x"))
    # Waits 1 and 2 end at t=3; the next (4) would end at 7 > 3.5.
    assert clock.sleeps == pytest.approx([1.0, 2.0])
    assert handler.calls == 3


async def test_should_retry_false_propagates_at_once() -> None:
    clock = FakeClock()
    handler = Flaky(failures=100, exc=ValueError("bad payload"))
    wrapped = retry(clock, max_retries=5, should_retry=lambda e: not isinstance(e, ValueError))(
        handler
    )
    with pytest.raises(ValueError, match="bad payload"):
        await wrapped(Message(b"x"))
    assert handler.calls == 1


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.999999])
async def test_jitter_keeps_each_wait_within_its_bounds(rand: float) -> None:
    clock = FakeClock()
    handler = Flaky(failures=4)
    wrapped = retry(
        clock,
        rand=rand,
        max_retries=4,
        initial_interval=0.5,
        multiplier=2.0,
        max_interval=3.0,
        jitter=0.4,
    )(handler)
    await wrapped(Message(b"x"))
    bases = [0.5, 1.0, 2.0, 3.0]
    assert len(clock.sleeps) == 4
    for wait, base in zip(clock.sleeps, bases, strict=True):
        assert base * 0.6 <= wait <= base * 1.4
        assert wait == pytest.approx(base * (1 + 0.4 * (2 * rand - 1)))


def test_interval_bounds_with_real_randomness() -> None:
    cfg = RetryConfig(initial_interval=0.2, multiplier=3.0, max_interval=4.0, jitter=0.5)
    rng = random.Random(7)
    for n in range(8):
        base = min(0.2 * 3.0**n, 4.0)
        waits = [cfg.interval(n, rng.random()) for _ in range(200)]
        assert all(base * 0.5 <= w <= base * 1.5 for w in waits)
        assert max(waits) - min(waits) > base * 0.5  # jitter actually spreads the waits


def test_bad_config_is_rejected() -> None:
    for bad in (
        {"max_retries": -1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"initial_interval": -1},
        {"max_elapsed_time": -1},
    ):
        with pytest.raises(ConfigurationError):
            RetryConfig(**bad)


async def test_retry_in_router_acks_after_success(bus: MemoryPubSub) -> None:
    topic = unique("t")
    clock = FakeClock()
    handler = Flaky(failures=2)
    done = asyncio.Event()

    async def handle(msg: Message) -> None:
        await handler(msg)
        done.set()

    router = Router(bus)
    router.add_handler(
        "h", topic, handle, group="g", middleware=[retry(clock, max_retries=3, jitter=0)]
    )
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(done.wait(), 10)
    assert handler.calls == 3
    assert clock.sleeps == pytest.approx([0.1, 0.2])
    await nothing_arrives(await bus.subscribe(topic, group="g"), 0.1)


async def test_real_sleep_is_awaited_not_blocking() -> None:
    handler = Flaky(failures=1)
    wrapped = Retry(RetryConfig(initial_interval=0.05, jitter=0))(handler)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    t = asyncio.create_task(ticker())
    await wrapped(Message(b"x"))
    t.cancel()
    assert handler.calls == 2
    assert ticks >= 2  # the loop kept running during the backoff
