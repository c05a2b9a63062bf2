"""Coalescing publisher of the redis:// backend (private).

Concurrent ``publish`` calls are queued and sent together: one task drains the
queue into a non-transactional pipeline of ``XADD`` commands (at most
``publish_batch`` messages per round trip), so many publishers share one round
trip. Each call returns once the reply to each of its ``XADD`` commands arrived.

Queue bound: at most ``max_pending_publishes`` messages wait to be sent; a publish
that does not fit waits for room (a single call larger than the bound waits for an
empty queue). While Redis is unreachable the batch is retried with capped backoff
until ``publish_timeout`` passes, then every call in it raises
:class:`~eventmill.BackendUnavailableError`. A batch that failed after being sent may
have been stored in part: the caller is told it failed and may publish again
(duplicates carry the same ``Message.id``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from eventmill.errors import PublishError
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed
from eventmill.pubsub.redis._common import log
from eventmill.pubsub.redis._config import RedisConfig
from eventmill.pubsub.redis._errors import TRANSIENT, describe, mapped, unavailable

__all__ = ["CoalescingPublisher", "PublishStats"]


@dataclass(frozen=True, slots=True)
class PublishStats:
    """Counters of a publisher since it was created."""

    messages: int
    """Messages Redis acknowledged."""
    round_trips: int
    """Pipelined round trips that succeeded (``messages / round_trips`` = coalescing)."""


class _Request:
    __slots__ = ("commands", "future", "topic")

    def __init__(self, topic: str, commands: list[list[Any]], future: asyncio.Future[None]) -> None:
        self.topic = topic
        self.commands = commands
        self.future = future


class CoalescingPublisher:
    """Sends queued ``XADD`` commands in pipelined batches (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, config: RedisConfig) -> None:
        self._client = client
        self._config = config
        self._queue: deque[_Request] = deque()
        self._queued = 0
        self._room: deque[asyncio.Future[None]] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._messages = 0
        self._round_trips = 0

    @property
    def stats(self) -> PublishStats:
        return PublishStats(messages=self._messages, round_trips=self._round_trips)

    async def publish(self, topic: str, commands: list[list[Any]]) -> None:
        """Queue ``commands`` (one ``XADD`` argument list each) and wait for their replies."""
        n = len(commands)
        limit = self._config.max_pending_publishes
        while self._queued and self._queued + n > limit:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room
            if self._closed:
                raise closed("redis://")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(topic, commands, future))
        self._queued += n
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="eventmill-redis-publish")
        await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch: list[_Request] = []
                count = 0
                while self._queue and (
                    not batch or count + len(self._queue[0].commands) <= self._config.publish_batch
                ):
                    req = self._queue.popleft()
                    batch.append(req)
                    count += len(req.commands)
                self._queued -= count
                self._wake_room()
                try:
                    await self._send(batch)
                except BaseException:
                    error = closed("redis://")
                    for req in batch:
                        if not req.future.done():
                            req.future.set_exception(error)
                    raise
        finally:
            self._flusher = None

    def _wake_room(self) -> None:
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    async def _send(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.publish_timeout
        backoff = Backoff(self._config.reconnect_max_delay)
        while True:
            try:
                with mapped("publish", PublishError, self._config):
                    async with self._client.pipeline(transaction=False) as pipe:
                        for req in batch:
                            for args in req.commands:
                                pipe.execute_command(*args)
                        results = await pipe.execute(raise_on_error=False)
                self._round_trips += 1
                break
            except TRANSIENT as exc:
                delay = backoff.next()
                if loop.time() + delay > deadline:
                    error = unavailable(exc, self._config, "publish")
                    for req in batch:
                        if not req.future.done():
                            req.future.set_exception(error)
                    return
                log.warning(
                    "redis:// publish: %s; retrying in %.2fs", describe(exc, self._config), delay
                )
                await asyncio.sleep(delay)
            except PublishError as error:
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(error)
                return
        i = 0
        for req in batch:
            n = len(req.commands)
            failed = [r for r in results[i : i + n] if isinstance(r, BaseException)]
            i += n
            if req.future.done():
                continue
            if failed:
                req.future.set_exception(
                    PublishError(
                        f"redis:// publish to topic {req.topic!r} failed: "
                        f"{describe(failed[0], self._config)}"
                    )
                )
            else:
                self._messages += n
                req.future.set_result(None)

    async def close(self) -> None:
        """Wait for queued publishes to be sent (or to fail), then refuse new ones."""
        self._closed = True
        self._wake_room()
        flusher = self._flusher
        if flusher is not None:
            await asyncio.shield(flusher)

    def abort(self) -> None:
        """Stop at once: cancel the sender, fail whatever was queued (the crash hook)."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
        error = closed("redis://")
        for req in self._queue:
            if not req.future.done():
                req.future.set_exception(error)
        self._queue.clear()
        self._wake_room()
