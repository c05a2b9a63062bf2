"""Timeout: a slow handler is cancelled and the message nacked."""

from __future__ import annotations

import asyncio

import pytest

from eventmill import ConfigurationError, HandlerError, Message
from eventmill.errors import HandlerTimeoutError
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import Router, Timeout, TimeoutConfig
from tests.pubsub.conformance import unique
from tests.router.support import running


async def test_slow_handler_is_cancelled() -> None:
    cancelled = False

    async def slow(msg: Message) -> None:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    wrapped = Timeout(TimeoutConfig(seconds=0.02))(slow)
    with pytest.raises(HandlerTimeoutError) as info:
        await wrapped(Message(b"x"))
    assert cancelled
    assert isinstance(info.value, HandlerError)
    assert isinstance(info.value, TimeoutError)


async def test_fast_handler_result_passes_through() -> None:
    out = Message(b"out")

    async def fast(msg: Message) -> Message:
        return out

    assert await Timeout(TimeoutConfig(seconds=5))(fast)(Message(b"x")) is out


async def test_the_handlers_own_timeout_error_is_not_called_a_timeout_of_the_middleware() -> None:
    upstream = TimeoutError("upstream HTTP call timed out after 0.1 s")

    async def calls_upstream(msg: Message) -> None:
        raise upstream

    with pytest.raises(TimeoutError) as info:
        await Timeout(TimeoutConfig(seconds=30))(calls_upstream)(Message(b"x"))
    assert info.value is upstream  # not a HandlerTimeoutError claiming 30 s passed


async def test_timed_out_message_is_redelivered(bus: MemoryPubSub) -> None:
    topic = unique("t")
    calls = 0
    second = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        second.set()

    router = Router(bus)
    router.add_handler(
        "h", topic, handle, group="g", middleware=[Timeout(TimeoutConfig(seconds=0.02))]
    )
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(second.wait(), 10)
    assert calls == 2


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigurationError):
        TimeoutConfig(seconds=0)
