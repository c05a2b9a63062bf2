"""CircuitBreaker: opens after N consecutive failures, half-opens after the reset timeout."""

from __future__ import annotations

import asyncio

import pytest

from eventmill import ConfigurationError, HandlerError, Message
from eventmill.errors import CircuitOpenError
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import CircuitBreaker, CircuitBreakerConfig, Router
from eventmill.router.middleware import CircuitState
from tests.pubsub.conformance import unique
from tests.router.support import FakeClock, running


class Downstream:
    def __init__(self) -> None:
        self.healthy = False
        self.calls = 0

    async def __call__(self, msg: Message) -> None:
        self.calls += 1
        if not self.healthy:
            raise ConnectionError("down")


def make(
    clock: FakeClock, **cfg: object
) -> tuple[CircuitBreaker, list[tuple[str, CircuitState, CircuitState]]]:
    changes: list[tuple[str, CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        CircuitBreakerConfig(**cfg),  # type: ignore[arg-type]
        on_change=lambda name, old, new: changes.append((name, old, new)),
        sleep=clock.sleep,
        clock=clock,
    )
    return breaker, changes


async def test_opens_then_half_opens_then_closes() -> None:
    clock = FakeClock()
    down = Downstream()
    breaker, changes = make(clock, failure_threshold=3, reset_timeout=30, open_delay=0.5)
    call = breaker(down)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await call(Message(b"x"))
    assert [c[1:] for c in changes] == [("closed", "open")]
    # Open: the handler is not called; the rejection is delayed to avoid a hot loop.
    with pytest.raises(CircuitOpenError) as info:
        await call(Message(b"x"))
    assert isinstance(info.value, HandlerError)
    assert down.calls == 3
    assert clock.sleeps == [0.5]
    # After the reset timeout one trial goes through; it fails: open again.
    clock.advance(30)
    with pytest.raises(ConnectionError):
        await call(Message(b"x"))
    assert down.calls == 4
    assert [c[1:] for c in changes[1:]] == [("open", "half-open"), ("half-open", "open")]
    with pytest.raises(CircuitOpenError):
        await call(Message(b"x"))
    assert down.calls == 4
    # Next trial succeeds: closed, calls flow again.
    clock.advance(30)
    down.healthy = True
    await call(Message(b"x"))
    await call(Message(b"x"))
    assert down.calls == 6
    assert [c[1:] for c in changes[3:]] == [("open", "half-open"), ("half-open", "closed")]


async def test_success_resets_the_consecutive_count() -> None:
    clock = FakeClock()
    down = Downstream()
    breaker, changes = make(clock, failure_threshold=2)
    call = breaker(down)
    for _ in range(3):
        down.healthy = False
        with pytest.raises(ConnectionError):
            await call(Message(b"x"))
        down.healthy = True
        await call(Message(b"x"))
    assert changes == []


async def test_only_one_trial_while_half_open() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    calls = 0

    async def slow_then_ok(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls <= 1:
            raise ConnectionError("down")
        await gate.wait()

    breaker, _ = make(clock, failure_threshold=1, reset_timeout=5, open_delay=0)
    call = breaker(slow_then_ok)
    with pytest.raises(ConnectionError):
        await call(Message(b"x"))
    clock.advance(5)

    async def try_once() -> None:
        await call(Message(b"trial"))

    trial = asyncio.create_task(try_once())
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError):
        await call(Message(b"meanwhile"))
    gate.set()
    await trial
    await call(Message(b"after"))
    assert calls == 3


async def test_non_failures_do_not_count() -> None:
    clock = FakeClock()
    breaker, changes = make(
        clock, failure_threshold=1, is_failure=lambda e: not isinstance(e, ValueError)
    )

    async def bad_input(msg: Message) -> None:
        raise ValueError("malformed")

    call = breaker(bad_input)
    for _ in range(3):
        with pytest.raises(ValueError):
            await call(Message(b"x"))
    assert changes == []


async def test_open_circuit_nacks_in_a_router(bus: MemoryPubSub) -> None:
    clock = FakeClock()
    down = Downstream()
    breaker, changes = make(clock, failure_threshold=2, reset_timeout=60, open_delay=0.01)
    topic = unique("t")
    router = Router(bus)
    router.add_handler("h", topic, down, group="g", middleware=[breaker])
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        while len(clock.sleeps) < 3:  # rejected (and redelivered) three times while open
            await asyncio.sleep(0.005)
    assert down.calls == 2
    assert changes == [("h", "closed", "open")]


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreakerConfig(failure_threshold=0)
    with pytest.raises(ConfigurationError):
        CircuitBreakerConfig(reset_timeout=-1)
