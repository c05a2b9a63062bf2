"""The consuming half of kafka://: group members, ephemeral readers, subscriptions.

One :class:`_GroupMember` (one aiokafka consumer in the group) serves every
subscription a :class:`~eventmill.pubsub.kafka.KafkaPubSub` opens for the same topic
and group; the subscriptions split its messages. An ephemeral subscription (no group)
gets an :class:`_EphemeralReader` of its own: a group-less consumer assigned to every
partition at its end.

Bookkeeping: every fetched record becomes a :class:`_Delivery`, tracked in its
partition's :class:`PartitionOffsets` until acked. A nack puts the delivery back at
the front of the local ready queue (the partition's commit point stays at it, so it
also comes back after a crash). A subscription hands out at most ``max_unsettled``
deliveries not yet settled; a source fetches while fewer than ``max_unsettled`` per
subscription are fetched and not yet acked (``READ_AHEAD`` fetched and not yet handed
out with no bound), and otherwise pauses until acks free room (the bounded-buffer
policy: wait, never drop).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Self

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._outage import Outage
from eventmill.pubsub._subscription import (
    AsyncCloseable,
    ReaderQueue,
    TopicGroup,
    Unsettled,
    stop_task,
)
from eventmill.pubsub.kafka._offsets import PartitionOffsets

if TYPE_CHECKING:
    from eventmill.pubsub.kafka._config import KafkaConfig

__all__ = ["ID_HEADER", "ConsumerSettings", "EphemeralReader", "GroupMember", "KafkaSubscription"]

log = logging.getLogger("eventmill.pubsub.kafka")

#: Header carrying ``Message.id``; the first header of every record eventmill writes.
ID_HEADER = "eventmill.id"

#: Errors of a commit that mean the broker (or the group's coordinator) is out of reach.
_UNREACHABLE = (
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
    OSError,
)

#: Most records a source fetches ahead of its readers when ``max_unsettled`` is unlimited.
READ_AHEAD = 1000


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """What a source needs from the backend: its config and aiokafka client options."""

    config: KafkaConfig
    client_options: dict[str, Any]
    republish: Callable[[str, int, list[Message]], Awaitable[None]]
    """Publish copies to (topic, partition) and return once acknowledged."""
    outage: Outage
    """The bus's one line for a broker that went away, and the one when it is back."""


class _Delivery:
    """One fetched record while it is tracked (queued, held by a subscriber, or nacked)."""

    __slots__ = ("id", "metadata", "msg", "offset", "payload", "po", "sub", "tp")

    def __init__(
        self,
        tp: TopicPartition,
        po: PartitionOffsets,
        offset: int,
        id: str,
        metadata: dict[str, str],
        payload: bytes,
    ) -> None:
        self.tp = tp
        self.po = po
        self.offset = offset
        self.id = id
        self.metadata = metadata
        self.payload = payload
        self.msg: Message | None = None
        self.sub: KafkaSubscription | None = None


def decode(record: ConsumerRecord[Any, Any]) -> tuple[str, dict[str, str], bytes]:
    """Return (id, metadata, payload) of a record; foreign records get a stable id."""
    headers = record.headers
    metadata: dict[str, str] = {}
    msg_id: str | None = None
    for i, (name, value) in enumerate(headers):
        text = value.decode("utf-8", "replace") if value is not None else ""
        if i == 0 and name == ID_HEADER:
            msg_id = text
        else:
            metadata[name] = text
    if not msg_id:
        msg_id = f"{record.topic}-{record.partition}-{record.offset}"
    payload = record.value if record.value is not None else b""
    return msg_id, metadata, bytes(payload)


class _Source:
    """A consumer feeding subscriptions: ready queue, waiting readers, settlement."""

    def __init__(self, topic: str, group: str | None, settings: ConsumerSettings) -> None:
        self.topic = topic
        self.group = group
        self.config = settings.config
        self.client_options = settings.client_options
        self._republish = settings.republish
        self._outage = settings.outage
        self.closed = False
        self.subs: set[KafkaSubscription] = set()
        self._ready: deque[_Delivery] = deque()
        self._readers = ReaderQueue()
        self._parts: dict[TopicPartition, PartitionOffsets] = {}
        self._outstanding = 0
        self._space = asyncio.Event()
        self._fetch_task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    # -- handing out -----------------------------------------------------------------

    async def next(self, sub: KafkaSubscription) -> Message:
        limit = sub._limit
        while True:
            if sub.closed or self.closed:
                raise StopAsyncIteration
            ready = self._ready
            if limit.full:
                if ready:
                    self._readers.wake()  # this one takes nothing: another subscription may
                await limit.wait()
                continue
            while ready:
                d = ready.popleft()
                if d.po.dropped:
                    continue
                msg = Message._received(d.id, dict(d.metadata), d.payload, partial(self._settle, d))
                d.msg = msg
                d.sub = sub
                sub.held.add(d)
                limit.count += 1
                if not self._space.is_set():
                    self._space.set()
                return msg
            await self._readers.wait(ready)

    # -- settlement ------------------------------------------------------------------

    def _settle(self, d: _Delivery, msg: Message, ok: bool) -> bool:
        if d.msg is not msg or d.po.dropped or self.closed:
            return False
        d.msg = None
        sub, d.sub = d.sub, None
        if sub is not None:
            sub.held.discard(d)
            sub._limit.done()
        if ok:
            self._outstanding -= 1
            if not self._space.is_set():
                self._space.set()
            if d.po.ack(d.offset):
                self._commit_point_moved()
        else:
            self._ready.appendleft(d)
            self._readers.wake()
        return True

    def _commit_point_moved(self) -> None:
        """Hook: a partition's acked prefix grew (group members commit it)."""

    def forget(self, sub: KafkaSubscription) -> None:
        """Drop ``sub`` without settling or releasing what it holds (its crash): the
        partitions' commit points stay below those messages, so a restart gets them."""
        for d in sub.held:
            if d.msg is not None:
                d.msg._release()
                d.msg = None
            d.sub = None
        sub.held.clear()
        sub._limit.close()
        self.subs.discard(sub)
        self._readers.wake_all()

    def release(self, sub: KafkaSubscription) -> None:
        """Put the messages ``sub`` holds unsettled back at the front, in offset order."""
        held = sorted(sub.held, key=lambda d: (d.tp.partition, d.offset), reverse=True)
        sub.held.clear()
        sub._limit.close()
        for d in held:
            if d.msg is not None:
                d.msg._release()
                d.msg = None
            d.sub = None
            if not d.po.dropped:
                self._ready.appendleft(d)
        # Wake everyone: the closing subscription's waiters end, the others re-wait
        # (and pick up the released messages).
        self._readers.wake_all()

    def _drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget partitions: their queued and held deliveries are abandoned."""
        for tp in tps:
            po = self._parts.pop(tp, None)
            if po is not None and not po.dropped:
                po.dropped = True
                self._outstanding -= len(po)
        if not self._space.is_set():
            self._space.set()

    # -- fetching --------------------------------------------------------------------

    def _accept(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        added = 0
        for tp, records in batch.items():
            po = self._parts.get(tp)
            if po is None:
                continue
            for r in records:
                if not self._wanted(tp, r.offset) or not po.track(r.offset):
                    continue
                msg_id, metadata, payload = decode(r)
                self._ready.append(_Delivery(tp, po, r.offset, msg_id, metadata, payload))
                added += 1
        if added:
            self._outstanding += added
            self._readers.wake(added)

    def _wanted(self, tp: TopicPartition, offset: int) -> bool:
        return True

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        cfg = self.config
        backoff = Backoff(cfg.reconnect_max_delay, cfg.reconnect_min_delay)
        while not self.closed:
            room = READ_AHEAD - len(self._ready)
            if cfg.max_unsettled is not None:
                room = min(room, cfg.max_unsettled * max(1, len(self.subs)) - self._outstanding)
            if room <= 0:
                self._space.clear()
                await self._space.wait()
                continue
            try:
                batch = await consumer.getmany(timeout_ms=1000, max_records=min(room, 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # aiokafka raises many kinds; keep consuming
                delay = backoff.next()
                log.warning(
                    "kafka:// fetch from %r failed (%s: %s); retrying in %.1fs",
                    self.topic,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if batch and not self.closed:
                self._accept(batch)
            # aiokafka reconnects by itself (and logs each attempt under "aiokafka"):
            # eventmill's own line comes from whether it has a live connection.
            if _connected(consumer):
                self._outage.ok()
            elif not self.closed:
                self._outage.lost(f"fetching {self.topic!r}", "no connection to the broker")

    async def _stop_tasks(self) -> None:
        self._readers.wake_all()
        for sub in self.subs:
            sub._limit.close()
        self._space.set()
        task, self._fetch_task = self._fetch_task, None
        await stop_task(task)

    async def _stop_consumer(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await asyncio.wait_for(consumer.stop(), self.config.close_timeout)
        except Exception as exc:
            log.warning("kafka:// consumer of %r did not stop cleanly: %s", self.topic, exc)

    async def close(self) -> None:
        raise NotImplementedError


class GroupMember(_Source):
    """One member of consumer group ``group`` on ``topic``, shared by subscriptions."""

    def __init__(self, topic: str, group: str, settings: ConsumerSettings) -> None:
        super().__init__(topic, group, settings)
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._commit_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the consumer and join the group; return once the join completed."""
        cfg = self.config
        consumer = AIOKafkaConsumer(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            rebalance_timeout_ms=cfg.rebalance_timeout_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            **self.client_options,
        )
        self._consumer = consumer
        consumer.subscribe([self.topic], listener=_Listener(self))
        # Subscribed before start(), aiokafka's start() waits until the group join
        # completed (an assignment, possibly empty, was received).
        limit = (cfg.session_timeout_ms + cfg.rebalance_timeout_ms + cfg.request_timeout_ms) / 1000
        try:
            async with asyncio.timeout(limit):
                await consumer.start()
        except BaseException:
            await self._stop_consumer()
            raise
        self._fetch_task = asyncio.create_task(self._fetch_loop())
        self._commit_task = asyncio.create_task(self._commit_loop())

    # -- rebalancing -----------------------------------------------------------------

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Commit the acked prefix of the revoked partitions, then drop their state."""
        revoked = [tp for tp in revoked if tp in self._parts]
        if not revoked or self.closed:
            return
        await self._commit({tp: self._parts[tp] for tp in revoked})
        self._drop(revoked)

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._parts:
                self._parts[tp] = PartitionOffsets()

    # -- committing ------------------------------------------------------------------

    def _commit_point_moved(self) -> None:
        self._commit_wanted.set()

    async def _commit(self, parts: dict[TopicPartition, PartitionOffsets] | None = None) -> bool:
        """Commit every acked prefix not yet confirmed; ``False`` if the broker refused."""
        consumer = self._consumer
        if consumer is None:
            return True
        async with self._commit_lock:
            todo = {
                tp: (po, po.commit_to)
                for tp, po in (parts or self._parts).items()
                if not po.dropped and po.needs_commit
            }
            if not todo:
                return True
            offsets = {tp: OffsetAndMetadata(off, "") for tp, (_, off) in todo.items()}
            try:
                await consumer.commit(offsets)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, _UNREACHABLE) or self._outage.down:
                    what = f"committing for group {self.group!r} on {self.topic!r}"
                    self._outage.lost(what, f"{type(exc).__name__}: {exc}")
                else:
                    log.warning(
                        "kafka:// commit for group %r on %r failed (%s: %s)",
                        self.group,
                        self.topic,
                        type(exc).__name__,
                        exc,
                    )
                return False
            for po, off in todo.values():
                po.committed = off
            return True

    async def _commit_loop(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.reconnect_max_delay, cfg.reconnect_min_delay)
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            if await self._commit():
                backoff.reset()
                if cfg.commit_interval > 0:
                    await asyncio.sleep(cfg.commit_interval)
            else:
                await backoff.sleep()
                self._commit_wanted.set()

    # -- closing ---------------------------------------------------------------------

    async def close(self) -> None:
        """Graceful: commit the acked prefixes, leave the group, release everything."""
        await self._shutdown(commit=True)

    async def abort(self) -> None:
        """The crash hook: stop without committing and without leaving the group, as a
        killed process would; the broker moves the partitions after the session timeout."""
        await self._shutdown(commit=False, leave=False)

    async def discard(self) -> None:
        """Stop without committing (a member whose start failed), leaving the group."""
        await self._shutdown(commit=False)

    async def _shutdown(self, *, commit: bool, leave: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        consumer = self._consumer
        if not leave and consumer is not None and consumer._coordinator is not None:
            # aiokafka has no "vanish" call: stop() sends LeaveGroup through this.
            consumer._coordinator._maybe_leave_group = _stay_in_group
        await self._stop_tasks()
        task, self._commit_task = self._commit_task, None
        await stop_task(task)
        if commit:
            try:
                async with asyncio.timeout(self.config.close_timeout):
                    await self._fill_holes()
                    await self._commit()
            except TimeoutError:
                log.warning("kafka:// final commit for group %r timed out", self.group)
        self._drop(list(self._parts))
        await self._stop_consumer()

    async def _fill_holes(self) -> None:
        """Re-publish messages left unacked below acked ones, then skip past them.

        Kafka keeps one offset per partition, so without this a restart would
        redeliver the acked messages after the first unacked one too. The copies
        (same id, metadata and payload) are appended to the same partition and
        acknowledged before the commit moves, so nothing is lost if this is cut
        short; at worst a message comes twice.
        """
        unsettled: dict[tuple[TopicPartition, int], _Delivery] = {}
        for d in self._ready:
            unsettled[(d.tp, d.offset)] = d
        for sub in self.subs:
            for d in sub.held:
                unsettled[(d.tp, d.offset)] = d
        for tp, po in list(self._parts.items()):
            holes, after = po.holes()
            if after is None or po.dropped:
                continue
            copies = [
                Message._received(d.id, dict(d.metadata), d.payload, None)
                for d in (unsettled.get((tp, o)) for o in holes)
                if d is not None
            ]
            if len(copies) != len(holes):
                continue  # should not happen; keep the plain prefix commit
            try:
                if copies:
                    await self._republish(tp.topic, tp.partition, copies)
            except Exception as exc:
                log.warning(
                    "kafka:// could not re-publish %d unacked message(s) of %s: %s",
                    len(copies),
                    tp,
                    exc,
                )
                continue
            po.skip_to(after)


async def _stay_in_group() -> None:
    return None


def _connected(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer's client holds a live connection to a broker."""
    conns: dict[Any, Any] = consumer._client._conns
    return any(conn.connected() for conn in conns.values())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, member: GroupMember) -> None:
        self._member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._member.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._member.on_assigned(assigned)


class EphemeralReader(_Source):
    """A group-less consumer of every partition of ``topic``, starting at their ends."""

    def __init__(self, topic: str, partitions: Iterable[int], settings: ConsumerSettings) -> None:
        super().__init__(topic, None, settings)
        self._tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._start: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        """Assign all partitions and resolve their true end offsets before returning.

        The end comes from a fetch's highwater mark, not ``ListOffsets``, which some
        Kafka-protocol brokers (Tansu) answer with the last batch's base offset + 1.
        Records below the resolved ends are skipped, so the subscription sees
        exactly the messages published after this returns (and possibly a few
        published while it ran).
        """
        cfg = self.config
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            **self.client_options,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            tps = self._tps
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            async with asyncio.timeout(cfg.request_timeout_ms / 1000):
                while any(consumer.highwater(tp) is None for tp in tps):
                    await consumer.getmany(*tps, timeout_ms=20)
            for tp in tps:
                end = consumer.highwater(tp)
                assert end is not None
                self._start[tp] = end
                consumer.seek(tp, end)
                self._parts[tp] = PartitionOffsets()
        except BaseException:
            await self._stop_consumer()
            raise
        self._fetch_task = asyncio.create_task(self._fetch_loop())

    def _wanted(self, tp: TopicPartition, offset: int) -> bool:
        return offset >= self._start[tp]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._stop_tasks()
        self._drop(list(self._parts))
        await self._stop_consumer()


class KafkaSubscription(TopicGroup, AsyncCloseable):
    """A subscription handed to the user; see :class:`eventmill.pubsub.base.Subscription`."""

    __slots__ = ("_group", "_limit", "_on_close", "_source", "_topic", "closed", "held")

    def __init__(
        self, source: _Source, on_close: Callable[[KafkaSubscription, bool], Awaitable[None]]
    ) -> None:
        self._source = source
        self._topic = source.topic
        self._group = source.group
        self._on_close = on_close
        self.closed = False
        self.held: set[_Delivery] = set()
        cfg = source.config
        what = f"kafka:// subscription to {self._topic!r}"
        if self._group is not None:
            what += f" (group {self._group!r})"
        self._limit = Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        return await self._source.next(self)

    async def close(self) -> None:
        """Flush acks made so far, hand unsettled messages back to the group."""
        if self.closed:
            return
        self.closed = True
        await self._on_close(self, True)

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): nothing is committed
        or handed back; the last subscription of a group member takes the member down
        without leaving the group (its partitions move after the session timeout)."""
        if self.closed:
            return
        self.closed = True
        await self._on_close(self, False)
