"""Running a coroutine at once: one that never waits finishes in the caller's stack, one
that waits is carried on by a task exactly as a task would have run it (its result,
its exception, a cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from eventmill.realtime import eager


async def test_a_coroutine_that_never_waits_finishes_at_once() -> None:
    steps: list[str] = []

    async def write() -> None:
        steps.append("written")

    assert eager.start(write()) is None
    assert steps == ["written"]  # before start() returned: no task, no loop turn


async def test_an_error_before_any_wait_is_raised_to_the_caller() -> None:
    async def write() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        eager.start(write())


async def test_a_coroutine_that_waits_is_finished_by_a_task() -> None:
    ready = asyncio.Event()
    steps: list[str] = []

    async def write() -> None:
        steps.append("first part")
        await ready.wait()  # a full socket: the server waits until it drains
        await asyncio.sleep(0)  # a bare yield on the way
        steps.append("second part")

    pending = eager.start(write())
    assert pending is not None
    assert steps == ["first part"]
    await asyncio.sleep(0)
    assert not pending.done()
    ready.set()
    await pending
    assert steps == ["first part", "second part"]


async def test_the_future_a_waiting_coroutine_gets_carries_its_outcome() -> None:
    loop = asyncio.get_running_loop()
    failing: asyncio.Future[None] = loop.create_future()
    seen: list[BaseException] = []

    async def write() -> None:
        try:
            await failing
        except OSError as exc:
            seen.append(exc)
            raise

    pending = eager.start(write())
    assert pending is not None
    failing.set_exception(BrokenPipeError("reset"))
    with pytest.raises(BrokenPipeError):
        await pending
    assert [type(e) for e in seen] == [BrokenPipeError]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[str] = []

    async def write() -> None:
        try:
            await never
        finally:
            cleaned.append("cleaned up")

    pending = eager.start(write())
    assert pending is not None
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert cleaned == ["cleaned up"]


async def test_another_kind_of_awaitable_is_awaited_in_a_future() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    awaitable: Awaitable[None] = future
    pending = eager.start(awaitable)
    assert pending is not None
    future.set_result(None)
    await pending
