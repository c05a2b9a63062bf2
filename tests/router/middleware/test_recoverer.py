"""Recoverer: an exception becomes a nack, with the traceback logged once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eventmill import Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import Recoverer, RecovererConfig, Router
from tests.pubsub.conformance import unique
from tests.router.support import running


async def test_exception_is_logged_with_traceback_and_nacked(
    bus: MemoryPubSub, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("t")
    calls = 0
    second = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("kaboom")
        second.set()

    router = Router(bus)
    router.add_middleware(Recoverer())
    router.add_handler("payments", topic, handle, group="g")
    caplog.set_level(logging.DEBUG, logger="eventmill")
    sent = Message(b"x")
    async with running(router):
        await bus.publish(topic, sent)
        await asyncio.wait_for(second.wait(), 10)
    assert calls == 2  # nacked, hence redelivered
    records = [r for r in caplog.records if r.name == "eventmill.router.recoverer"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    assert rec.exc_info is not None
    assert rec.exc_info[0] is ZeroDivisionError
    assert "payments" in rec.getMessage()
    assert topic in rec.getMessage()
    assert sent.id in rec.getMessage()
    assert "Traceback" in caplog.text
    # The router did not log the failure a second time.
    assert not [
        r for r in caplog.records if r.name == "eventmill.router" and r.levelno >= logging.WARNING
    ]


async def test_without_recoverer_the_router_logs_one_line_and_nacks(
    bus: MemoryPubSub, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("t")
    calls = 0
    second = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("kaboom")
        second.set()

    router = Router(bus)
    router.add_handler("payments", topic, handle, group="g")
    caplog.set_level(logging.WARNING, logger="eventmill")
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(second.wait(), 10)
    records = [r for r in caplog.records if r.name == "eventmill.router"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].exc_info is None
    assert "ZeroDivisionError: kaboom" in records[0].getMessage()


async def test_custom_logger_and_level(caplog: pytest.LogCaptureFixture) -> None:
    async def handle(msg: Message) -> None:
        raise RuntimeError("x")

    caplog.set_level(logging.DEBUG, logger="mine")
    msg = Message(b"x")
    mw = Recoverer(RecovererConfig(logger="mine", level=logging.WARNING))
    assert await mw(handle)(msg) is None
    assert msg.nacked
    [rec] = [r for r in caplog.records if r.name == "mine"]
    assert rec.levelno == logging.WARNING


async def test_cancellation_is_not_swallowed() -> None:
    async def handle(msg: Message) -> None:
        await asyncio.Event().wait()

    msg = Message(b"x")
    wrapped = Recoverer()(handle)

    async def run() -> None:
        await wrapped(msg)

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not msg.settled
