"""kafka://host:port: the PubSub class (see the package docstring)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from eventmill.errors import (
    BackendUnavailableError,
    PublishError,
    SubscribeError,
)
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed, describe
from eventmill.pubsub._outage import Outage
from eventmill.pubsub._subscription import AsyncStartCloseable, InFlight
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.kafka._config import KafkaConfig
from eventmill.pubsub.kafka._consumer import (
    ID_HEADER,
    ConsumerSettings,
    EphemeralReader,
    GroupMember,
    KafkaSubscription,
)
from eventmill.pubsub.kafka._errors import mapped, retriable, translate

__all__ = ["KafkaConfig", "KafkaPubSub"]

log = logging.getLogger("eventmill.pubsub.kafka")

_TOPIC_EXISTS = 36


class KafkaPubSub(AsyncStartCloseable):
    """Kafka publisher and subscriber. See the module docstring for semantics."""

    capabilities = Capabilities(
        persistent=True,
        consumer_groups=True,
        ordering="per_key",
        redelivers_after_crash=True,
        replay=True,
        has_server=True,
    )

    def __init__(self, config: KafkaConfig | None = None) -> None:
        self.config = config or KafkaConfig()
        cfg = self.config
        self._client_options: dict[str, Any] = {
            "bootstrap_servers": cfg.bootstrap_servers,
            "client_id": cfg.client_id,
            "request_timeout_ms": cfg.request_timeout_ms,
            "retry_backoff_ms": int(cfg.reconnect_min_delay * 1000),
        }
        self._producers: list[AIOKafkaProducer] = []
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: dict[str, list[int]] = {}
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._round_robin = itertools.count()
        self._members: dict[tuple[str, str], GroupMember] = {}
        self._readers: set[EphemeralReader] = set()
        self._publishing = InFlight()
        self._outage = Outage(log, "kafka://", self.config.bootstrap_servers)
        self._started = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> KafkaPubSub:
        """Build from ``kafka://host:port?options`` (see :class:`KafkaConfig`); no I/O."""
        return cls(KafkaConfig.from_url(url))

    async def start(self) -> None:
        """Connect the producer and the admin client (idempotent)."""
        if self._closed:
            raise closed("kafka://")
        if self._started:
            return
        cfg = self.config
        producers = [
            AIOKafkaProducer(
                acks="all",
                linger_ms=cfg.linger_ms,
                max_batch_size=cfg.max_batch_size,
                max_request_size=cfg.max_request_size,
                **self._client_options,
            )
            for _ in range(cfg.producers)
        ]
        admin = AIOKafkaAdminClient(**self._client_options)
        try:
            with mapped(f"cannot reach {cfg.bootstrap_servers}", BackendUnavailableError):
                for producer in producers:
                    await producer.start()
                await admin.start()
        except BaseException:
            await self._stop_clients(producers, admin)
            raise
        self._producers, self._admin = producers, admin
        self._started = True

    # -- topics ----------------------------------------------------------------------

    async def _partitions(self, topic: str) -> list[int]:
        """Partition ids of ``topic``, creating it first if needed."""
        known = self._topics.get(topic)
        if known is not None:
            return known
        lock = self._topic_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            known = self._topics.get(topic)
            if known is not None:
                return known
            await self.start()
            assert self._admin is not None
            cfg = self.config
            response = await self._admin.create_topics(
                [NewTopic(topic, cfg.partitions, cfg.replication_factor)]
            )
            for _name, code, *rest in response.topic_errors:
                if code not in (0, _TOPIC_EXISTS):
                    detail = rest[0] if rest and rest[0] else f"error code {code}"
                    raise PublishError(f"kafka:// cannot create topic {topic!r}: {detail}")
            parts = await self._producers[0].partitions_for(topic)
            known = sorted(parts)
            self._topics[topic] = known
            return known

    # -- publishing ------------------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        """Send ``messages``; return once the broker acknowledged all (``acks=all``)."""
        if self._closed:
            raise closed("kafka://")
        if topic not in self._topics:
            validate_name("topic", topic)
        check_messages(messages)
        if not messages:
            return
        with self._publishing:
            await self._publish(topic, messages)

    async def _publish(self, topic: str, messages: tuple[Message, ...]) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.publish_timeout
        backoff: Backoff | None = None  # made on the first retry: most publishes need none
        todo = list(messages)
        first = True
        while True:
            try:
                with mapped(f"publish to {topic!r} failed", PublishError, retry=True):
                    if first:
                        # Fast path: aiokafka bounds each attempt by request_timeout_ms.
                        first = False
                        partitions = self._topics.get(topic) or await self._partitions(topic)
                        todo = await self._send(topic, partitions, todo)
                    else:
                        async with asyncio.timeout_at(deadline):
                            partitions = await self._partitions(topic)
                            todo = await self._send(topic, partitions, todo)
            except TimeoutError as exc:
                raise PublishError(
                    f"kafka:// publish to {topic!r} not acknowledged within "
                    f"{cfg.publish_timeout}s (broker {cfg.bootstrap_servers} unreachable?)"
                ) from exc
            except KafkaError as exc:  # retriable: mapped() raised the others
                log.warning("kafka:// publish to %r: %s; retrying", topic, describe(exc))
            if not todo:
                return
            if self._closed:
                raise closed("kafka://")
            if backoff is None:
                backoff = Backoff(cfg.reconnect_max_delay, cfg.reconnect_min_delay)
            delay = backoff.next()
            if loop.time() + delay > deadline:
                raise PublishError(
                    f"kafka:// publish to {topic!r}: {len(todo)} message(s) not acknowledged "
                    f"within {cfg.publish_timeout}s"
                )
            await asyncio.sleep(delay)

    async def _send(self, topic: str, partitions: list[int], todo: list[Message]) -> list[Message]:
        """Send ``todo``; return the messages whose send failed with a retriable error.

        The partition is computed here (Kafka's murmur2 of the key, or one partition
        per call for unkeyed messages) so that each partition is always written by
        the same producer of the pool: per-partition order is kept while the
        producers' requests are in flight in parallel.
        """
        producers = self._producers
        if not producers:
            raise closed("kafka://")
        keyname = self.config.key
        n = len(partitions)
        shared_partition: int | None = None
        futures: list[asyncio.Future[Any]] = []
        for m in todo:
            key = m.metadata.get(keyname)
            if key is None:
                if shared_partition is None:
                    shared_partition = partitions[next(self._round_robin) % n]
                partition = shared_partition
                key_bytes = None
            else:
                key_bytes = key.encode()
                partition = partitions[(murmur2(key_bytes) & 0x7FFFFFFF) % n]
            headers = [(ID_HEADER, m.id.encode())]
            headers.extend((k, v.encode()) for k, v in m.metadata.items())
            producer = producers[partition % len(producers)]
            futures.append(
                await producer.send(
                    topic, m.payload, key=key_bytes, partition=partition, headers=headers
                )
            )
        if len(futures) == 1:
            try:
                await futures[0]
                return []
            except Exception as exc:  # classified below, like gather's results
                results: list[Any] = [exc]
        else:
            results = await asyncio.gather(*futures, return_exceptions=True)
        failed: list[Message] = []
        for m, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if retriable(result):
                    failed.append(m)
                    continue
                raise translate(result, f"publish to {topic!r} failed", PublishError) from result
        if failed:
            log.warning("kafka:// %d record(s) to %r failed; retrying", len(failed), topic)
        return failed

    # -- subscribing -----------------------------------------------------------------

    def _settings(self) -> ConsumerSettings:
        return ConsumerSettings(self.config, self._client_options, self._republish, self._outage)

    async def _republish(self, topic: str, partition: int, messages: list[Message]) -> None:
        """Append copies to one partition (used by a closing group member)."""
        producers = self._producers
        if not producers:
            raise closed("kafka://")
        producer = producers[partition % len(producers)]
        futures = []
        for m in messages:
            key = m.metadata.get(self.config.key)
            headers = [(ID_HEADER, m.id.encode())]
            headers.extend((k, v.encode()) for k, v in m.metadata.items())
            futures.append(
                await producer.send(
                    topic,
                    m.payload,
                    key=key.encode() if key is not None else None,
                    partition=partition,
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)

    async def subscribe(self, topic: str, *, group: str | None = None) -> KafkaSubscription:
        """Join ``group`` on ``topic`` (shared member per group), or read ephemerally."""
        if self._closed:
            raise closed("kafka://")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        with mapped(f"cannot subscribe to {topic!r}", SubscribeError):
            partitions = await self._partitions(topic)
            if group is None:
                reader = EphemeralReader(topic, partitions, self._settings())
                await reader.start()
                self._readers.add(reader)
                sub = KafkaSubscription(reader, self._close_ephemeral)
                reader.subs.add(sub)
                return sub
            member = self._members.get((topic, group))
            if member is None or member.closed:
                member = GroupMember(topic, group, self._settings())
                self._members[(topic, group)] = member
                try:
                    await member.start()
                except BaseException:
                    self._members.pop((topic, group), None)
                    await member.discard()
                    raise
            sub = KafkaSubscription(member, self._close_member_sub)
            member.subs.add(sub)
            return sub

    async def _close_ephemeral(self, sub: KafkaSubscription, graceful: bool) -> None:
        reader = sub._source
        assert isinstance(reader, EphemeralReader)
        self._readers.discard(reader)
        await reader.close()

    async def _close_member_sub(self, sub: KafkaSubscription, graceful: bool) -> None:
        """Close (``graceful``) or abort ``sub``; the member goes with its last one."""
        member = sub._source
        assert isinstance(member, GroupMember)
        if member.subs - {sub}:
            if graceful:
                member.subs.discard(sub)
                member.release(sub)
            else:
                member.forget(sub)
            return
        if self._members.get((member.topic, member.group or "")) is member:
            del self._members[(member.topic, member.group or "")]
        if graceful:
            await member.close()  # sees the messages ``sub`` holds (to re-publish holes)
        else:
            await member.abort()
        member.subs.discard(sub)

    # -- closing ---------------------------------------------------------------------

    async def close(self) -> None:
        """Close subscriptions (committing acks), wait for publishes, stop the clients."""
        if self._closed:
            return
        self._closed = True
        subs = [s for m in self._members.values() for s in m.subs]
        subs += [s for r in self._readers for s in r.subs]
        for sub in subs:
            sub.closed = True
        await asyncio.gather(
            *(m.close() for m in self._members.values()),
            *(r.close() for r in self._readers),
            return_exceptions=True,
        )
        self._members.clear()
        self._readers.clear()
        try:
            await asyncio.wait_for(self._publishing.idle(), self.config.close_timeout)
        except TimeoutError:
            log.warning("kafka:// close: publishes still in progress after timeout")
        await self._stop_clients(self._producers, self._admin)
        self._producers, self._admin = [], None

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): group members stop
        without committing and without leaving their groups (the broker moves their
        partitions after ``session_timeout_ms``), readers stop, the clients close."""
        if self._closed:
            return
        self._closed = True
        for sub in [s for m in self._members.values() for s in m.subs]:
            sub.closed = True
        for sub in [s for r in self._readers for s in r.subs]:
            sub.closed = True
        await asyncio.gather(
            *(m.abort() for m in self._members.values()),
            *(r.close() for r in self._readers),
            return_exceptions=True,
        )
        self._members.clear()
        self._readers.clear()
        await self._stop_clients(self._producers, self._admin)
        self._producers, self._admin = [], None

    async def _stop_clients(
        self, producers: list[AIOKafkaProducer], admin: AIOKafkaAdminClient | None
    ) -> None:
        timeout = self.config.close_timeout
        for producer in producers:
            try:
                await asyncio.wait_for(producer.stop(), timeout)
            except Exception as exc:
                log.warning("kafka:// producer did not stop cleanly: %s", describe(exc))
        if admin is not None:
            try:
                await asyncio.wait_for(admin.close(), timeout)
            except Exception as exc:
                log.warning("kafka:// admin client did not stop cleanly: %s", describe(exc))
