"""kafka://host:port - Apache Kafka (or any Kafka-protocol broker) through aiokafka.

Publishing: batching producers (``acks=all``; ``producers`` of them, default 1);
each partition is always written by the same producer, so order per partition
holds. ``publish`` returns after the broker acknowledged every record of the call.
A message's partition comes from its metadata field ``KafkaConfig.key`` (default
``partition_key``), hashed like Kafka's default partitioner (murmur2), so messages
with the same key keep their order. Messages without the key: all of one ``publish``
call go to one partition (round robin between calls), so they keep their order too.
``Message.id`` travels in the header ``eventmill.id``, the metadata in further
headers. Topics are created on first use with ``KafkaConfig.partitions`` partitions.
A publish that meets a lost connection is retried with capped backoff for up to
``publish_timeout`` seconds (a record may then be stored twice; receivers drop
duplicates by id), then fails with :class:`~eventmill.PublishError`.

Consuming with a group (``subscribe`` returns once the join completed): a Kafka
consumer group with manual commits, starting at the earliest offset when new.
Offsets are committed only up to the first unacked message of each partition. On a
graceful close, unacked messages below acked ones are re-published (copies with the
same id) before the commit moves past them, so the next member gets exactly the
unacked messages; after a crash it gets each partition's tail from its first unacked
message. A nack puts the message back at the front of the member's local queue (the
commit point stays at it). Subscriptions one ``KafkaPubSub`` opens for the same topic
and group share one group member (one aiokafka consumer) and split its messages.
On a rebalance, revoked partitions' acked prefix is committed and their in-flight
messages are dropped (acks for them become no-ops; the new owner gets them again).

Consuming without a group: a group-less consumer assigned to every partition at its
end (resolved from a fetch's high watermark) before ``subscribe`` returns.

Reconnect: aiokafka reconnects by itself; fetches, commits and publishes that fail
are retried with backoff capped at ``reconnect_backoff_max`` seconds.

URL options: ``kafka://host:port[,host2:port2]?key=user_id&partitions=8`` and the
other fields of :class:`KafkaConfig`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError
from aiokafka.partitioner import murmur2

from eventmill.errors import (
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    PublishError,
    SubscribeError,
)
from eventmill.message import Message
from eventmill.pubsub._kafka_consumer import (
    ID_HEADER,
    ConsumerSettings,
    EphemeralReader,
    GroupMember,
    KafkaSubscription,
)
from eventmill.pubsub._subscription import AsyncStartCloseable
from eventmill.pubsub.base import Capabilities, check_messages, validate_name

__all__ = ["KafkaConfig", "KafkaPubSub"]

log = logging.getLogger("eventmill.pubsub.kafka")

_TOPIC_EXISTS = 36
_UNAVAILABLE = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Settings of :class:`KafkaPubSub`; each can be given as a URL query option."""

    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list (the URL's host part)."""
    key: str = "partition_key"
    """Metadata field whose value is the record key (partition and per-key order)."""
    partitions: int = 4
    """Partitions of topics eventmill creates on first use (existing topics are kept)."""
    replication_factor: int = 1
    """Replication factor of topics eventmill creates."""
    client_id: str = "eventmill"
    """Client id sent to the broker (shows in its logs and quotas)."""
    linger_ms: int = 0
    """How long a producer waits to fill a batch before sending it. 0 suits many
    concurrent awaiting publishers: aiokafka keeps one request in flight per broker,
    and records queue into the next batch while it is out."""
    max_batch_size: int = 262_144
    """Largest producer batch per partition, in bytes."""
    max_request_size: int = 1_048_576
    """Largest produce request, in bytes (the largest message must fit)."""
    producers: int = 1
    """Producer clients in the pool. aiokafka keeps one produce request in flight per
    broker and client; several clients (each owning a fixed share of the partitions,
    so per-partition order holds) overlap requests, which can help against a
    multi-broker cluster (against one Tansu broker, 1 measured fastest)."""
    publish_timeout: float = 30.0
    """Seconds a ``publish`` keeps retrying after lost connections before it raises."""
    max_in_flight: int = 1_000
    """Most messages a group member (or ephemeral subscription) has fetched and not
    acked; fetching pauses while that many are out (the buffer never drops)."""
    session_timeout_ms: int = 10_000
    """Group session timeout: a member silent this long is removed and its partitions
    move (this is how long a crashed consumer's messages wait)."""
    heartbeat_interval_ms: int = 3_000
    """Heartbeat interval of group members (well below ``session_timeout_ms``)."""
    rebalance_timeout_ms: int = 10_000
    """How long the broker waits for members to rejoin during a rebalance."""
    max_poll_interval_ms: int = 300_000
    """A member that fetches nothing for this long (all its messages held unacked)
    leaves the group; its unacked messages go to the others."""
    fetch_max_wait_ms: int = 100
    """Longest the broker holds an empty fetch (latency of an idle consumer)."""
    request_timeout_ms: int = 15_000
    """Timeout of one request to the broker."""
    commit_interval: float = 0.0
    """Least seconds between offset commits of a member (0: commit as soon as the
    previous commit returned; commits also happen on revoke and close)."""
    reconnect_backoff_min: float = 0.05
    """First retry delay after a failed fetch, commit or publish, in seconds."""
    reconnect_backoff_max: float = 2.0
    """Cap of the doubling retry delay, in seconds."""
    close_timeout: float = 10.0
    """Seconds ``close`` waits for the final commit and for the clients to stop."""

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigurationError("kafka:// needs host:port")
        if not self.key:
            raise ConfigurationError("kafka:// key must not be empty")
        positive = (
            "partitions",
            "replication_factor",
            "max_batch_size",
            "max_request_size",
            "producers",
            "max_in_flight",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "rebalance_timeout_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "publish_timeout",
            "reconnect_backoff_min",
            "reconnect_backoff_max",
            "close_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"kafka:// {name} must be positive")
        if self.linger_ms < 0 or self.fetch_max_wait_ms < 0 or self.commit_interval < 0:
            raise ConfigurationError("kafka:// linger_ms, fetch_max_wait_ms, commit_interval >= 0")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigurationError("kafka:// heartbeat_interval_ms must be < session_timeout_ms")

    @classmethod
    def from_url(cls, url: str) -> KafkaConfig:
        """Parse ``kafka://host:port[,host:port]?option=value&...``."""
        parts = urlsplit(url)
        if parts.scheme != "kafka":
            raise ConfigurationError("kafka:// URL expected")
        if parts.username or parts.password:
            raise ConfigurationError("kafka:// credentials (SASL) are not supported yet")
        netloc = unquote(parts.netloc)
        kwargs: dict[str, Any] = {"bootstrap_servers": netloc} if netloc else {}
        types = {f.name: f.type for f in fields(cls)}
        query = parse_qs(parts.query)
        unknown = set(query) - (set(types) - {"bootstrap_servers"})
        if unknown:
            raise ConfigurationError(f"unknown kafka:// option(s): {', '.join(sorted(unknown))}")
        for name, values in query.items():
            raw = values[-1]
            kind = types[name]
            try:
                if kind == "int":
                    kwargs[name] = int(raw)
                elif kind == "float":
                    kwargs[name] = float(raw)
                else:
                    kwargs[name] = raw
            except ValueError:
                raise ConfigurationError(f"kafka:// {name} must be a {kind}") from None
        return cls(**kwargs)


def _describe(exc: BaseException) -> str:
    """A short description of a client error (aiokafka's texts carry no secrets)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
            "retry_backoff_ms": int(cfg.reconnect_backoff_min * 1000),
        }
        self._producers: list[AIOKafkaProducer] = []
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: dict[str, list[int]] = {}
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._round_robin = itertools.count()
        self._members: dict[tuple[str, str], GroupMember] = {}
        self._readers: set[EphemeralReader] = set()
        self._publishing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> KafkaPubSub:
        """Build from ``kafka://host:port?options`` (see :class:`KafkaConfig`); no I/O."""
        return cls(KafkaConfig.from_url(url))

    async def start(self) -> None:
        """Connect the producer and the admin client (idempotent)."""
        if self._closed:
            raise ClosedError("kafka:// pubsub is closed")
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
            for producer in producers:
                await producer.start()
            await admin.start()
        except Exception as exc:
            await self._stop_clients(producers, admin)
            raise BackendUnavailableError(
                f"kafka:// cannot reach {cfg.bootstrap_servers} ({_describe(exc)})"
            ) from exc
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
            raise ClosedError("kafka:// pubsub is closed")
        if topic not in self._topics:
            validate_name("topic", topic)
        check_messages(messages)
        if not messages:
            return
        self._publishing += 1
        self._idle.clear()
        try:
            await self._publish(topic, messages)
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._idle.set()

    async def _publish(self, topic: str, messages: tuple[Message, ...]) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.publish_timeout
        delay = cfg.reconnect_backoff_min
        todo = list(messages)
        first = True
        while True:
            try:
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
            except (PublishError, ClosedError, BackendUnavailableError):
                raise
            except KafkaError as exc:
                if not isinstance(exc, _UNAVAILABLE) and not exc.retriable:
                    raise PublishError(
                        f"kafka:// publish to {topic!r} failed ({_describe(exc)})"
                    ) from exc
                log.warning("kafka:// publish to %r: %s; retrying", topic, _describe(exc))
            if not todo:
                return
            if self._closed:
                raise ClosedError("kafka:// pubsub closed during publish")
            if loop.time() + delay > deadline:
                raise PublishError(
                    f"kafka:// publish to {topic!r}: {len(todo)} message(s) not acknowledged "
                    f"within {cfg.publish_timeout}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.reconnect_backoff_max)

    async def _send(self, topic: str, partitions: list[int], todo: list[Message]) -> list[Message]:
        """Send ``todo``; return the messages whose send failed with a retriable error.

        The partition is computed here (Kafka's murmur2 of the key, or one partition
        per call for unkeyed messages) so that each partition is always written by
        the same producer of the pool: per-partition order is kept while the
        producers' requests are in flight in parallel.
        """
        producers = self._producers
        if not producers:
            raise ClosedError("kafka:// pubsub is closed")
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
                if isinstance(result, KafkaError) and (
                    isinstance(result, _UNAVAILABLE) or result.retriable
                ):
                    failed.append(m)
                    continue
                raise PublishError(
                    f"kafka:// publish to {topic!r} failed ({_describe(result)})"
                ) from result
        if failed:
            log.warning("kafka:// %d record(s) to %r failed; retrying", len(failed), topic)
        return failed

    # -- subscribing -----------------------------------------------------------------

    def _settings(self) -> ConsumerSettings:
        return ConsumerSettings(self.config, self._client_options, self._republish)

    async def _republish(self, topic: str, partition: int, messages: list[Message]) -> None:
        """Append copies to one partition (used by a closing group member)."""
        producers = self._producers
        if not producers:
            raise ClosedError("kafka:// pubsub is closed")
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
            raise ClosedError("kafka:// pubsub is closed")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        try:
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
                    await member.abort()
                    raise
            sub = KafkaSubscription(member, self._close_member_sub)
            member.subs.add(sub)
            return sub
        except (KafkaError, OSError, TimeoutError) as exc:
            raise SubscribeError(
                f"kafka:// cannot subscribe to {topic!r} ({_describe(exc)})"
            ) from exc

    async def _close_ephemeral(self, sub: KafkaSubscription) -> None:
        reader = sub._source
        assert isinstance(reader, EphemeralReader)
        self._readers.discard(reader)
        await reader.close()

    async def _close_member_sub(self, sub: KafkaSubscription) -> None:
        member = sub._source
        assert isinstance(member, GroupMember)
        if member.subs - {sub}:
            member.subs.discard(sub)
            member.release(sub)
            return
        if self._members.get((member.topic, member.group or "")) is member:
            del self._members[(member.topic, member.group or "")]
        await member.close()  # sees the messages ``sub`` holds (to re-publish holes)
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
            await asyncio.wait_for(self._idle.wait(), self.config.close_timeout)
        except TimeoutError:
            log.warning("kafka:// close: publishes still in progress after timeout")
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
                log.warning("kafka:// producer did not stop cleanly: %s", _describe(exc))
        if admin is not None:
            try:
                await asyncio.wait_for(admin.close(), timeout)
            except Exception as exc:
                log.warning("kafka:// admin client did not stop cleanly: %s", _describe(exc))
