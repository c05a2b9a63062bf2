"""Subscriptions of the redis:// backend (private).

Group subscription (``subscribe(topic, group=g)``), one consumer per subscription
with a unique name (``host:pid:random``):

* a reader task alternates ``XAUTOCLAIM`` scans (entries idle for ``claim_idle``:
  left by dead members, released by closed ones) with blocking ``XREADGROUP ... >``
  reads of up to ``batch_size`` new entries; the blocking read waits on the server,
  at most ``block`` seconds or until the next claim scan is due;
* after a connection error, the reader first reads its own pending entries again
  (``XREADGROUP ... 0``): entries Redis handed to this consumer whose reply was lost
  with the connection (a restart) are delivered at once, not after ``claim_idle``;
* entries are buffered locally; at most ``max_unsettled`` messages are handed out
  and not settled, the reader stops reading while the subscription holds that many
  (buffered, handed out unsettled, or acked but not yet flushed) and reads ahead only
  while fewer than ``batch_size / 2`` are buffered;
* ``ack()`` queues an ``XACK``; a flush task sends queued acks in one command per
  round trip (acks made during a round trip go in the next), on a connection of the
  subscription's own (:class:`~eventmill.pubsub.redis._conn.DirectConnection`);
* ``nack()`` puts a fresh copy of the message back at the front of this
  subscription's buffer at once (the entry stays in this consumer's pending list;
  its idle time is reset with ``XCLAIM ... JUSTID`` in the next flush);
* ``close()`` interrupts the blocking read (it never waits it out), flushes the acks
  and releases every unsettled entry with ``XCLAIM ... IDLE <long> JUSTID`` so that
  any other member's next claim scan takes it at once, in one round trip that also
  deletes the consumer if it has nothing pending. With nothing to flush or release
  it makes no round trip: the consumer is deleted in the background (if the bus
  closes first, the other members' scan removes it after ``consumer_timeout``).

An entry claimed by the scan that this subscription still holds is not handed out a
second time (the claim only renewed its idle time).

Ephemeral subscription (``subscribe(topic)``): ``XREAD`` from the last entry id at
subscribe time, then from the last id read, so nothing published after
``subscribe`` returned is missed (unless ``maxlen`` trimming removed it before it
was read). It keeps no state on the server. ``nack()`` puts the message back at the
front of its buffer; ``ack()`` does nothing. It reads ahead while fewer than
``batch_size / 2`` messages are buffered and fewer than ``max_unsettled`` are handed
out and not settled; otherwise reading pauses (the entries wait in the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex

from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._outage import Outage
from eventmill.pubsub._subscription import BufferedSubscription, Unsettled, stop_task
from eventmill.pubsub.redis._common import decode_entry, log
from eventmill.pubsub.redis._config import RedisConfig
from eventmill.pubsub.redis._conn import DirectConnection
from eventmill.pubsub.redis._errors import TRANSIENT, describe

__all__ = ["EphemeralSubscription", "GroupSubscription", "ensure_group"]

#: Idle time (ms) given to released entries: old enough for any claim_idle.
_RELEASED_IDLE_MS = 30 * 24 * 3600 * 1000

_DELETE_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""

_DELETE_DEAD_CONSUMERS = """
local removed = 0
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1]
    elseif info[i] == 'pending' then pending = info[i + 1]
    elseif info[i] == 'idle' then idle = info[i + 1] end
  end
  if pending == 0 and idle > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"""


async def ensure_group(client: aioredis.Redis, key: str, group: str) -> None:
    """Create ``group`` on stream ``key`` at id 0 (creating the stream) unless it exists."""
    try:
        await client.xgroup_create(key, group, id="0", mkstream=True)
    except rex.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class _Base(BufferedSubscription[Message]):
    """Room accounting and the reader task shared by both kinds."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: RedisConfig,
        topic: str,
        key: str,
        group: str | None,
        on_close: Callable[[_Base], None],
        outage: Outage,
    ) -> None:
        what = f"redis:// subscription to {topic!r}" + (f" (group {group!r})" if group else "")
        super().__init__(
            topic, group, Unsettled(config.max_unsettled, config.stall_warning, log, what)
        )
        self._client = client
        self._config = config
        self._key = key
        self._on_close = on_close
        self._outage = outage
        self._room: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"eventmill-redis-read-{self._topic}")

    async def _run(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): nothing is flushed
        or released; held entries are claimed by another member after ``claim_idle``."""
        if self._closed:
            return
        self._vanish()
        await self._disconnect()
        self._on_close(self)

    def _vanish(self) -> None:
        """Stop at once without flushing or releasing anything."""
        raise NotImplementedError

    async def _disconnect(self) -> None:
        """Close the connections this subscription holds outside the pool (after
        :meth:`_vanish`)."""

    def _take(self, msg: Message) -> Message:
        if not self._room.is_set() and self._has_room():
            self._room.set()
        return msg

    def _has_room(self) -> bool:
        raise NotImplementedError

    def _room_for(self, held: int) -> int:
        """How many entries one read may fetch while ``held`` count against
        ``max_unsettled`` (at most ``batch_size``)."""
        cfg = self._config
        if cfg.max_unsettled is None:
            return cfg.batch_size
        return min(cfg.batch_size, cfg.max_unsettled - held)

    async def _wait_room(self) -> None:
        while not self._has_room():
            self._room.clear()
            await self._room.wait()

    async def _stop_reader(self) -> None:
        self._closed = True
        self._readers.wake_all()
        self._limit.close()
        await stop_task(self._task)


class EphemeralSubscription(_Base):
    """``XREAD`` fan-out from a fixed starting id (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: RedisConfig,
        topic: str,
        key: str,
        on_close: Callable[[_Base], None],
        outage: Outage,
        last_id: bytes,
    ) -> None:
        super().__init__(client, config, topic, key, None, on_close, outage)
        self._last_id = last_id

    def _has_room(self) -> bool:
        return (
            len(self._buffer) <= self._config.batch_size // 2
            and self._room_for(self._limit.count + len(self._buffer)) > 0
        )

    def _settle(self, msg: Message, ok: bool) -> bool:
        if self._closed:
            return False
        self._limit.done()
        if not self._room.is_set() and self._has_room():
            self._room.set()
        if ok:
            return True
        again = Message._received(msg.id, dict(msg.metadata), msg.payload, self._settle)
        self._buffer.appendleft(again)
        self._readers.wake()
        return True

    async def _run(self) -> None:
        cfg = self._config
        block_ms = max(1, int(cfg.block * 1000))
        backoff = Backoff(cfg.reconnect_max_delay)
        while not self._closed:
            await self._wait_room()
            count = self._room_for(self._limit.count + len(self._buffer))
            try:
                resp: Any = await self._client.xread(
                    {self._key: self._last_id}, count=count, block=block_ms
                )
            except TRANSIENT as exc:
                self._outage.lost(f"reading {self._topic!r}", describe(exc, cfg))
                await backoff.sleep()
                continue
            except rex.RedisError as exc:
                delay = backoff.next()
                log.error("redis:// XREAD %s failed: %s", self._topic, describe(exc, cfg))
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self._outage.ok()
            n = 0
            for _stream, entries in resp or ():
                for entry_id, fields in entries:
                    if entry_id is None:
                        continue
                    self._last_id = entry_id
                    mid, md, payload = decode_entry(entry_id, fields)
                    self._buffer.append(Message._received(mid, md, payload, self._settle))
                    n += 1
            if n:
                self._readers.wake(n)

    async def close(self) -> None:
        """Stop reading and drop what was buffered; nothing is kept on the server."""
        if self._closed:
            return
        await self._stop_reader()
        self._buffer.clear()
        self._on_close(self)

    def _vanish(self) -> None:
        self._closed = True
        self._readers.wake_all()
        self._limit.close()
        if self._task is not None:
            self._task.cancel()


class GroupSubscription(_Base):
    """One consumer of a consumer group (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: RedisConfig,
        topic: str,
        key: str,
        group: str,
        consumer: str,
        on_close: Callable[[_Base], None],
        outage: Outage,
        goodbye: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        super().__init__(client, config, topic, key, group, on_close, outage)
        self._goodbye = goodbye
        self._groupname = group
        self.consumer = consumer
        self._held: dict[bytes, Message] = {}
        self._acks: list[bytes] = []
        self._touch: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None
        self._direct = DirectConnection(client, config.socket_timeout)
        self._claim_now = asyncio.Event()
        self._claim_interval = min(self._config.claim_idle / 2, 5.0)
        self._sweep_interval = max(self._claim_interval, self._config.consumer_timeout / 10)

    # -- reading ------------------------------------------------------------------------

    def _has_room(self) -> bool:
        return (
            len(self._buffer) <= self._config.batch_size // 2
            and self._room_for(len(self._held) + len(self._acks)) > 0
        )

    def claim_soon(self) -> None:
        """Run a claim scan before the next read (another member released entries)."""
        self._claim_now.set()

    def _deliver(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], acked: frozenset[bytes] = frozenset()
    ) -> int:
        """Buffer ``entries`` (except those held, or ``acked`` but not yet flushed)."""
        n = 0
        for entry_id, fields in entries:
            if entry_id is None or fields is None or entry_id in self._held or entry_id in acked:
                continue
            mid, md, payload = decode_entry(entry_id, fields)
            msg = Message._received(mid, md, payload, functools.partial(self._settle, entry_id))
            self._held[entry_id] = msg
            self._buffer.append(msg)
            n += 1
        if n:
            self._readers.wake(n)
        return n

    async def _run(self) -> None:
        cfg = self._config
        loop = asyncio.get_running_loop()
        backoff = Backoff(cfg.reconnect_max_delay)
        claim_idle_ms = max(1, int(cfg.claim_idle * 1000))
        cursor: bytes | str = "0-0"
        # After a connection error: the id after which our own pending list is read again.
        own: bytes | None = None
        next_claim = 0.0
        next_sweep = 0.0
        while not self._closed:
            await self._wait_room()
            count = self._room_for(len(self._held) + len(self._acks))
            try:
                if own is not None:
                    # Entries Redis handed to this consumer may have had their reply lost
                    # with the connection: they wait in our pending list, unseen.
                    mine: Any = await self._client.xreadgroup(
                        self._groupname, self.consumer, {self._key: own}, count=count
                    )
                    entries = mine[0][1] if mine else []
                    if not entries:
                        own = None
                        continue
                    own = entries[-1][0]
                    self._deliver(entries, frozenset(self._acks))
                    continue
                now = loop.time()
                if now >= next_claim or self._claim_now.is_set():
                    self._claim_now.clear()
                    resp: Any = await self._client.xautoclaim(
                        self._key, self._groupname, self.consumer, claim_idle_ms, cursor, count
                    )
                    cursor = resp[0]
                    if len(resp) > 2 and resp[2]:
                        log.warning(
                            "redis:// %d entries of topic %r pending in group %r were trimmed "
                            "(maxlen) before being acked; they are lost to that group",
                            len(resp[2]),
                            self._topic,
                            self._groupname,
                        )
                    got = self._deliver(resp[1])
                    if cursor in (b"0-0", "0-0"):
                        next_claim = loop.time() + self._claim_interval
                        if next_claim >= next_sweep:
                            next_sweep = next_claim + self._sweep_interval
                            await self._sweep()
                    if got:
                        continue
                    # More of the pending list to scan: go on after one read.
                block = min(cfg.block, max(0.0, next_claim - loop.time()))
                block_ms = max(1, int(block * 1000))
                resp = await self._client.xreadgroup(
                    self._groupname, self.consumer, {self._key: ">"}, count=count, block=block_ms
                )
                backoff.reset()
                self._outage.ok()
                for _stream, entries in resp or ():
                    self._deliver(entries)
            except TRANSIENT as exc:
                own = b"0-0"
                where = f"reading {self._topic!r} (group {self._groupname!r})"
                self._outage.lost(where, describe(exc, cfg))
                await backoff.sleep()
            except rex.RedisError as exc:
                if isinstance(exc, rex.ResponseError) and "NOGROUP" in str(exc):
                    # The stream or group vanished (deleted, or a server without
                    # persistence restarted): recreate it and go on from the oldest entry.
                    log.warning(
                        "redis:// group %r of %r is gone; recreating it",
                        self._groupname,
                        self._topic,
                    )
                    with contextlib.suppress(*TRANSIENT, rex.RedisError):
                        await ensure_group(self._client, self._key, self._groupname)
                    cursor = "0-0"
                    own = None
                else:
                    log.error(
                        "redis:// read %s/%s failed: %s",
                        self._topic,
                        self._groupname,
                        describe(exc, cfg),
                    )
                await asyncio.sleep(backoff.next())

    async def _sweep(self) -> None:
        """Delete group members with nothing pending that were idle for ``consumer_timeout``
        (left by crashed processes; a live member reads at least every ``block`` seconds,
        and a deleted live member is recreated by its next read anyway)."""
        timeout_ms = int(self._config.consumer_timeout * 1000)
        removed = await self._client.eval(
            _DELETE_DEAD_CONSUMERS, 1, self._key, self._groupname, str(timeout_ms)
        )
        if removed:
            log.info(
                "redis:// removed %s idle consumer(s) from group %r of %r",
                removed,
                self._groupname,
                self._topic,
            )

    # -- settling -----------------------------------------------------------------------

    def _settle(self, entry_id: bytes, msg: Message, ok: bool) -> bool:
        if self._held.get(entry_id) is not msg:
            return False  # settled after close, or a stale copy
        self._limit.done()
        if ok:
            del self._held[entry_id]
            self._acks.append(entry_id)
        else:
            again = Message._received(
                msg.id, dict(msg.metadata), msg.payload, functools.partial(self._settle, entry_id)
            )
            self._held[entry_id] = again
            self._buffer.appendleft(again)
            self._touch.append(entry_id)
            self._readers.wake()
        if self._flusher is None and not self._closed:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return True

    async def _flush(self) -> None:
        """Send queued acks and touches until none are left, retrying while Redis is away."""
        backoff = Backoff(self._config.reconnect_max_delay)
        try:
            while self._acks or self._touch:
                acks, self._acks = self._acks, []
                touch, self._touch = self._touch, []
                try:
                    await self._send(acks, touch, [])
                except TRANSIENT as exc:
                    self._acks[:0] = acks
                    self._touch[:0] = touch
                    self._outage.lost("sending acks", describe(exc, self._config))
                    await backoff.sleep()
                    continue
                except rex.RedisError as exc:
                    log.error("redis:// ack flush failed: %s", describe(exc, self._config))
                    continue
                backoff.reset()
                self._outage.ok()
                if self._has_room():
                    self._room.set()
        finally:
            self._flusher = None

    async def _send(
        self, acks: list[bytes], touch: list[bytes], release: list[bytes], *, final: bool = False
    ) -> None:
        """One round trip: XACK ``acks``, renew ``touch``, release ``release``; on ``final``
        also delete this consumer if nothing is pending for it any more."""
        key, group, consumer = self._key, self._groupname, self.consumer
        commands: list[list[Any]] = []
        if acks:
            commands.append(["XACK", key, group, *acks])
        if touch:
            commands.append(["XCLAIM", key, group, consumer, 0, *touch, "JUSTID"])
        if release:
            idle = ["IDLE", _RELEASED_IDLE_MS, "JUSTID"]
            commands.append(["XCLAIM", key, group, consumer, 0, *release, *idle])
        if final:
            commands.append(["EVAL", _DELETE_IF_IDLE, 1, key, group, consumer])
        if not commands:
            return
        for reply in await self._direct.execute(commands):
            if isinstance(reply, rex.ResponseError):
                raise reply

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading, flush acks, release unsettled entries to the group (see module doc)."""
        if self._closed:
            return
        await self._stop_reader()
        flusher = self._flusher
        if flusher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(flusher), self._config.publish_timeout)
            except Exception:
                flusher.cancel()
                await asyncio.wait({flusher})  # the connection is free only once it ended
        release = list(self._held)
        self._held.clear()
        self._buffer.clear()
        acks, self._acks = self._acks, []
        self._touch.clear()
        if not acks and not release:
            # Nothing the group needs: say goodbye without waiting for the answer.
            self._goodbye(functools.partial(self._send, [], [], [], final=True))
            self._on_close(self)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.publish_timeout
        backoff = Backoff(self._config.reconnect_max_delay)
        while True:
            try:
                await self._send(acks, [], release, final=True)
                break
            except TRANSIENT as exc:
                delay = backoff.next()
                if loop.time() + delay > deadline:
                    log.warning(
                        "redis:// close %s/%s: could not flush %d acks and release %d entries "
                        "(%s); they will be redelivered after claim_idle",
                        self._topic,
                        self._groupname,
                        len(acks),
                        len(release),
                        describe(exc, self._config),
                    )
                    break
                await asyncio.sleep(delay)
            except rex.RedisError as exc:
                log.error(
                    "redis:// close %s/%s: %s",
                    self._topic,
                    self._groupname,
                    describe(exc, self._config),
                )
                break
        await self._direct.close()
        self._on_close(self)

    async def _disconnect(self) -> None:
        await self._direct.close()

    def _vanish(self) -> None:
        self._closed = True
        self._readers.wake_all()
        self._limit.close()
        for task in (self._task, self._flusher):
            if task is not None:
                task.cancel()
        self._held.clear()
        self._acks.clear()
        self._touch.clear()
