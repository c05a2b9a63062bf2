"""redis:// and rediss://: the PubSub class (see the package docstring)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from eventmill.errors import BackendUnavailableError, ConfigurationError, SubscribeError
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed
from eventmill.pubsub._outage import Outage
from eventmill.pubsub._subscription import AsyncStartCloseable, stop_task
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.redis._common import encode_fields, log
from eventmill.pubsub.redis._config import RedisConfig
from eventmill.pubsub.redis._errors import TRANSIENT, describe, mapped, unavailable
from eventmill.pubsub.redis._publisher import CoalescingPublisher, PublishStats
from eventmill.pubsub.redis._subscription import (
    EphemeralSubscription,
    GroupSubscription,
    _Base,
    ensure_group,
)

__all__ = ["PublishStats", "RedisConfig", "RedisPubSub"]

_HOST = f"{socket.gethostname()}:{os.getpid()}"


class RedisPubSub(AsyncStartCloseable):
    """Publisher and subscriber on Redis Streams. See the module docstring."""

    capabilities = Capabilities(
        # Survives this client and its process restarting; surviving a Redis restart
        # additionally needs persistence (AOF/RDB) configured on the server.
        persistent=True,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=True,
        has_server=True,
    )

    def __init__(self, config: RedisConfig | None = None) -> None:
        self.config = config or RedisConfig()
        self._redis: aioredis.Redis | None = None
        self._publisher: CoalescingPublisher | None = None
        self._subs: set[_Base] = set()
        self._keys: dict[str, str] = {}
        self._xadd_head: dict[str, list[Any]] = {}
        self._goodbyes: set[asyncio.Task[None]] = set()
        self._outage = Outage(log, "redis://", self.config.safe_url)
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisPubSub:
        """Build from ``redis://...?options`` (see :class:`RedisConfig`); no I/O."""
        return cls(RedisConfig.from_url(url))

    def __repr__(self) -> str:
        return f"RedisPubSub({self.config.safe_url!r})"

    # -- connection ---------------------------------------------------------------------

    @property
    def _client(self) -> aioredis.Redis:
        client = self._redis
        if client is None:
            cfg = self.config
            try:
                pool = aioredis.ConnectionPool.from_url(
                    cfg.url,
                    socket_timeout=cfg.socket_timeout,
                    socket_connect_timeout=cfg.connect_timeout,
                    retry=Retry(NoBackoff(), 0),
                    protocol=2,
                    decode_responses=False,
                )
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid redis:// url {cfg.safe_url!r}: {describe(exc, cfg)}"
                ) from None
            client = self._redis = aioredis.Redis(connection_pool=pool)
        return client

    async def start(self) -> None:
        """Connect and check that Redis answers (``PING``).

        Raises :class:`~eventmill.BackendUnavailableError` if it does not.
        """
        if self._closed:
            raise closed("redis://")
        try:
            with mapped("connect", BackendUnavailableError, self.config):
                try:
                    await self._client.ping()
                except (rex.AuthenticationError, rex.AuthorizationError, rex.ResponseError) as e:
                    # a wrong password or user, a database number the server does not
                    # have: the URL is wrong, and retrying will not mend it
                    raise ConfigurationError(
                        f"redis server refused {self.config.safe_url!r}: {describe(e, self.config)}"
                    ) from None
        except TRANSIENT as exc:
            raise unavailable(exc, self.config, "connect") from exc

    def _key(self, topic: str) -> str:
        key = self._keys.get(topic)
        if key is None:
            validate_name("topic", topic)
            key = self._keys[topic] = self.config.prefix + topic
            head: list[Any] = ["XADD", key]
            if self.config.maxlen is not None:
                head += ["MAXLEN", "~", self.config.maxlen]
            head.append("*")
            self._xadd_head[topic] = head
        return key

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        """Append ``messages`` to the topic's stream; return once Redis acknowledged each.

        Raises :class:`~eventmill.BackendUnavailableError` if Redis stays unreachable
        for ``publish_timeout`` seconds, :class:`~eventmill.PublishError` if Redis
        refused a command, :class:`~eventmill.ClosedError` after ``close()``.
        """
        if self._closed:
            raise closed("redis://")
        self._key(topic)
        check_messages(messages)
        head = self._xadd_head[topic]
        commands = [head + encode_fields(m) for m in messages]
        if not commands:
            return
        publisher = self._publisher
        if publisher is None:
            publisher = self._publisher = CoalescingPublisher(
                self._client, self.config, self._outage
            )
        await publisher.publish(topic, commands)

    @property
    def publish_stats(self) -> PublishStats:
        """How many messages were published in how many round trips (coalescing)."""
        if self._publisher is None:
            return PublishStats(messages=0, round_trips=0)
        return self._publisher.stats

    # -- subscribing --------------------------------------------------------------------

    async def subscribe(
        self, topic: str, *, group: str | None = None
    ) -> GroupSubscription | EphemeralSubscription:
        """Join consumer group ``group`` of ``topic``, or open an ephemeral fan-out.

        Returns once the group exists on the server (created at the oldest entry
        if new) or, without a group, once the starting position is fixed.
        """
        if self._closed:
            raise closed("redis://")
        key = self._key(topic)
        sub: GroupSubscription | EphemeralSubscription
        if group is not None:
            validate_name("group", group)
            await self._retrying(
                f"subscribe to {topic!r}", lambda: ensure_group(self._client, key, group)
            )
            consumer = f"{_HOST}:{uuid.uuid4().hex[:12]}"
            sub = GroupSubscription(
                self._client,
                self.config,
                topic,
                key,
                group,
                consumer,
                self._forget,
                self._outage,
                self._goodbye,
            )
        else:
            last = await self._retrying(
                f"subscribe to {topic!r}", lambda: self._client.xrevrange(key, count=1)
            )
            last_id: bytes = last[0][0] if last else b"0-0"
            sub = EphemeralSubscription(
                self._client, self.config, topic, key, self._forget, self._outage, last_id
            )
        if self._closed:
            raise closed("redis://")
        self._subs.add(sub)
        sub.start()
        return sub

    async def _retrying(self, action: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``call()``; on a transient error call again until ``publish_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.publish_timeout
        backoff = Backoff(self.config.reconnect_max_delay)
        while True:
            try:
                with mapped(action, SubscribeError, self.config):
                    return await call()
            except TRANSIENT as exc:
                delay = backoff.next()
                if loop.time() + delay > deadline:
                    raise unavailable(exc, self.config, action) from exc
                await asyncio.sleep(delay)

    def _goodbye(self, call: Callable[[], Awaitable[None]]) -> None:
        """Run ``call()`` (a closed member's last words) without anyone waiting for it;
        one still running when the bus closes is cancelled."""

        async def run() -> None:
            try:
                await call()
            except Exception as exc:  # best effort: the members' scan tidies up later
                log.debug("redis:// goodbye of a closed subscription failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._goodbyes.add(task)
        task.add_done_callback(self._goodbyes.discard)

    def _forget(self, sub: _Base) -> None:
        self._subs.discard(sub)
        if isinstance(sub, GroupSubscription):
            for other in self._subs:
                if (
                    isinstance(other, GroupSubscription)
                    and other.topic == sub.topic
                    and other.group == sub.group
                ):
                    other.claim_soon()

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every subscription (acks flushed, unsettled entries released), wait for
        publishes in progress, then disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        subs = list(self._subs)
        await asyncio.gather(*(s.close() for s in subs), return_exceptions=True)
        if self._publisher is not None:
            await self._publisher.close()
        for task in list(self._goodbyes):
            await stop_task(task)
        if self._redis is not None:
            await self._redis.aclose()
            await self._redis.connection_pool.disconnect()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): connections drop,
        acks are not flushed; held entries are claimed by another member after
        ``claim_idle``."""
        self._closed = True
        subs = list(self._subs)
        for sub in subs:
            sub._vanish()
        self._subs.clear()
        for sub in subs:
            await sub._disconnect()
        for task in list(self._goodbyes):
            task.cancel()
        if self._publisher is not None:
            await self._publisher.abort()
        if self._redis is not None:
            await self._redis.connection_pool.disconnect(inuse_connections=True)
