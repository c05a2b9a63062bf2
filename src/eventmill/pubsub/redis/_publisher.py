"""Coalescing publisher of the redis:// backend (private).

A ``publish`` that finds no send in progress sends its ``XADD`` commands itself, in
the caller's task, on the publisher's own connection (:class:`DirectConnection`):
one write, one read, no task. Calls made while a send is in progress are queued
and sent together once it ends: one task drains the queue, at most
``publish_batch`` messages per round trip, so many publishers share one round
trip. Either way a call returns once the reply to each of its ``XADD`` commands
arrived, and calls are sent in the order they were made.

Queue bound: at most ``max_pending_publishes`` messages wait to be sent; a publish
that does not fit waits for room (a single call larger than the bound waits for an
empty queue). While Redis is unreachable a send is retried with capped backoff
until ``publish_timeout`` passes, then every call in it raises
:class:`~eventmill.BackendUnavailableError`. A send that failed after being written
may have been stored in part: the caller is told it failed and may publish again
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
from eventmill.pubsub._outage import Outage
from eventmill.pubsub.redis._common import log
from eventmill.pubsub.redis._config import RedisConfig
from eventmill.pubsub.redis._conn import DirectConnection
from eventmill.pubsub.redis._errors import TRANSIENT, describe, mapped, unavailable

__all__ = ["CoalescingPublisher", "PublishStats"]


@dataclass(frozen=True, slots=True)
class PublishStats:
    """Counters of a publisher since it was created."""

    messages: int
    """Messages Redis acknowledged."""
    round_trips: int
    """Round trips that succeeded (``messages / round_trips`` = coalescing)."""


class _Request:
    __slots__ = ("commands", "future", "topic")

    def __init__(
        self, topic: str, commands: list[list[Any]], future: asyncio.Future[None] | None
    ) -> None:
        self.topic = topic
        self.commands = commands
        self.future = future


class CoalescingPublisher:
    """Sends ``XADD`` commands inline when idle, in pipelined batches when busy (see the
    module docstring)."""

    def __init__(
        self, client: aioredis.Redis, config: RedisConfig, outage: Outage | None = None
    ) -> None:
        self._config = config
        self._outage = outage
        self._conn = DirectConnection(client, config.socket_timeout)
        self._queue: deque[_Request] = deque()
        self._queued = 0
        self._room: deque[asyncio.Future[None]] = deque()
        # True while a send is in progress (inline or the flusher's); the queue is
        # only ever non-empty while it is.
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed = False
        self._aborted = False
        self._messages = 0
        self._round_trips = 0

    @property
    def stats(self) -> PublishStats:
        return PublishStats(messages=self._messages, round_trips=self._round_trips)

    async def publish(self, topic: str, commands: list[list[Any]]) -> None:
        """Send ``commands`` (one ``XADD`` argument list each) and wait for their replies."""
        if not self._busy:
            self._busy = True
            try:
                error = (await self._send([_Request(topic, commands, None)]))[0]
            finally:
                self._idle()
            if error is not None:
                raise error
            return
        n = len(commands)
        limit = self._config.max_pending_publishes
        loop = asyncio.get_running_loop()
        while self._queued and self._queued + n > limit:
            room: asyncio.Future[None] = loop.create_future()
            self._room.append(room)
            await room
            if self._closed:
                raise closed("redis://")
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append(_Request(topic, commands, future))
        self._queued += n
        if not self._busy:  # the send in progress ended while this call waited for room
            self._start_flusher()
        await future

    def _idle(self) -> None:
        """A send ended: hand what was queued meanwhile to the flusher, or report idle."""
        self._busy = False
        if self._queue and not self._aborted:
            self._start_flusher()
        elif self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _start_flusher(self) -> None:
        self._busy = True
        self._flusher = asyncio.get_running_loop().create_task(
            self._flush(), name="eventmill-redis-publish"
        )

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
                    errors = await self._send(batch)
                except BaseException:
                    error = closed("redis://")
                    for req in batch:
                        if req.future is not None and not req.future.done():
                            req.future.set_exception(error)
                    raise
                for req, err in zip(batch, errors, strict=True):
                    fut = req.future
                    if fut is None or fut.done():
                        continue
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)
        finally:
            self._flusher = None
            self._idle()

    def _wake_room(self) -> None:
        while self._room:
            fut = self._room.popleft()
            if not fut.done():
                fut.set_result(None)

    async def _send(self, batch: list[_Request]) -> list[Exception | None]:
        """One round trip for ``batch`` (retried while Redis is away); the error of each
        request, or ``None`` where Redis stored all of its messages."""
        commands = [args for req in batch for args in req.commands]
        loop = asyncio.get_running_loop()
        deadline = 0.0
        backoff: Backoff | None = None
        while True:
            try:
                with mapped("publish", PublishError, self._config):
                    replies = await self._conn.execute(commands)
                self._round_trips += 1
                break
            except TRANSIENT as exc:
                if backoff is None:
                    deadline = loop.time() + self._config.publish_timeout
                    backoff = Backoff(self._config.reconnect_max_delay)
                delay = backoff.next()
                if self._aborted:
                    return [closed("redis://")] * len(batch)
                if loop.time() + delay > deadline:
                    return [unavailable(exc, self._config, "publish")] * len(batch)
                if self._outage is not None:
                    self._outage.lost("publish", describe(exc, self._config))
                else:
                    log.warning(
                        "redis:// publish: %s; retrying in %.2fs",
                        describe(exc, self._config),
                        delay,
                    )
                await asyncio.sleep(delay)
            except PublishError as error:
                return [error] * len(batch)
        errors: list[Exception | None] = []
        i = 0
        for req in batch:
            n = len(req.commands)
            failed = next((r for r in replies[i : i + n] if isinstance(r, BaseException)), None)
            i += n
            if failed is None:
                self._messages += n
                errors.append(None)
            else:
                errors.append(
                    PublishError(
                        f"redis:// publish to topic {req.topic!r} failed: "
                        f"{describe(failed, self._config)}"
                    )
                )
        return errors

    async def close(self) -> None:
        """Wait for the send in progress and queued publishes (sent, or failed), then
        refuse new ones and close the connection."""
        self._closed = True
        self._wake_room()
        if self._busy:
            self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        await self._conn.close()

    async def abort(self) -> None:
        """Stop at once: cancel the sender, fail whatever was queued, drop the
        connection (the crash hook)."""
        self._closed = self._aborted = True
        if self._flusher is not None:
            self._flusher.cancel()
        error = closed("redis://")
        for req in self._queue:
            if req.future is not None and not req.future.done():
                req.future.set_exception(error)
        self._queue.clear()
        self._queued = 0
        self._wake_room()
        await self._conn.close()
