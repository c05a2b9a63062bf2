"""memory:// - an in-process backend; also the test double for users' own code.

Delivery: a message published to a topic goes to every consumer group that exists
at that moment (a group exists from its first ``subscribe`` until the PubSub
closes, and keeps its queue while no member is connected) and to every open
ephemeral subscription. Nothing survives the process.

Buffers: each group and each ephemeral subscription holds at most
``MemoryConfig.buffer_size`` undelivered messages. When a publish would overflow
one, the policy ``MemoryConfig.when_full`` applies: ``"block"`` (default) waits
until every target has room, ``"raise"`` raises :class:`~eventmill.BufferFullError`
and publishes nothing. Messages are never dropped silently. A subscription hands out
at most ``max_unsettled`` messages not yet settled; then it waits for a settlement.

URL options: ``memory://?buffer_size=10000&when_full=block&max_unsettled=1000``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from eventmill.errors import BufferFullError, ConfigurationError
from eventmill.message import _PENDING, Message
from eventmill.pubsub._errors import closed
from eventmill.pubsub._options import (
    MAX_UNSETTLED,
    STALL_WARNING,
    Seconds,
    apply_options,
    check_unsettled,
    split_query,
)
from eventmill.pubsub._subscription import (
    AsyncCloseable,
    AsyncStartCloseable,
    ReaderQueue,
    TopicGroup,
    Unsettled,
)
from eventmill.pubsub.base import Capabilities, check_messages, validate_name

__all__ = ["MemoryConfig", "MemoryPubSub"]

log = logging.getLogger("eventmill.pubsub.memory")


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """Settings of :class:`MemoryPubSub`."""

    buffer_size: int = 10_000
    """Most undelivered messages a group or ephemeral subscription holds (default 10,000)."""
    when_full: Literal["block", "raise"] = "block"
    """What ``publish`` does when a target buffer is full: wait for room, or raise
    :class:`~eventmill.BufferFullError` without publishing anything (default ``block``)."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more until one is settled (default 1000;
    ``unlimited`` in a URL: no bound)."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigurationError("memory:// buffer_size must be at least 1")
        if self.when_full not in ("block", "raise"):
            raise ConfigurationError("memory:// when_full must be 'block' or 'raise'")
        check_unsettled("memory://", self.max_unsettled, self.stall_warning)

    @classmethod
    def from_url(cls, url: str) -> MemoryConfig:
        """Parse ``memory://?buffer_size=N&when_full=block|raise``."""
        options, _ = split_query(urlsplit(url).query)
        return apply_options(cls(), options, scheme="memory://")


#: A message waiting in a queue: ``(payload, id, key, value, key, value, ...)``, built
#: by :func:`_item`. One flat tuple of bytes and strings, not a Message (nor a dict):
#: the garbage collector stops tracking it at its next pass, so a backlog of a million
#: costs it nothing, where a million Messages made every full collection walk them all.
#: The Message is built when it is handed out (:func:`_message`).
_Item = tuple[Any, ...]


_new = Message.__new__


def _item(msg: Message) -> _Item:
    md = msg.metadata
    if not md:
        return (msg.payload, msg.id)
    return (msg.payload, msg.id, *itertools.chain.from_iterable(md.items()))


def _message(item: _Item, on_settle: Callable[[Message, bool], bool]) -> Message:
    if len(item) == 2:
        return Message._received(item[1], {}, item[0], on_settle)
    flat = item[2:]
    return Message._received(
        item[1], dict(zip(flat[::2], flat[1::2], strict=True)), item[0], on_settle
    )


class _Queue:
    """A bounded FIFO shared by the members of one group (or one ephemeral subscriber)."""

    __slots__ = ("closed", "inflight", "items", "limit", "on_settle", "readers", "space")

    def __init__(self, limit: int) -> None:
        self.items: deque[_Item] = deque()
        self.limit = limit
        self.readers = ReaderQueue()
        self.space: deque[asyncio.Future[None]] = deque()
        self.inflight: dict[Message, _MemorySubscription] = {}
        self.closed = False
        self.on_settle = self.settle

    def wake_space(self) -> None:
        space = self.space
        while space:
            fut = space.popleft()
            if not fut.done():
                fut.set_result(None)

    def settle(self, msg: Message, ok: bool) -> bool:
        sub = self.inflight.pop(msg, None)
        if sub is None:
            return False
        sub._limit.done()
        if not ok:
            self.items.appendleft(_item(msg))
            self.readers.wake()
        return True

    def release(self, sub: _MemorySubscription) -> None:
        """Requeue, in their original order, the unsettled messages held by ``sub``."""
        held = [m for m, s in self.inflight.items() if s is sub]
        for msg in reversed(held):
            del self.inflight[msg]
            msg._release()
            self.items.appendleft(_item(msg))
        if held:
            self.readers.wake()

    def close(self) -> None:
        self.closed = True
        self.readers.wake_all()
        for fut in self.space:
            if not fut.done():
                fut.set_result(None)
        self.space.clear()


class _Topic:
    __slots__ = ("ephemeral", "groups", "targets")

    def __init__(self) -> None:
        self.groups: dict[str, _Queue] = {}
        self.ephemeral: set[_Queue] = set()
        self.targets: list[_Queue] = []
        """Every group's queue and every ephemeral one: where a publish goes."""

    def changed(self) -> None:
        """Recompute :attr:`targets` (a group or an ephemeral subscription came or went)."""
        self.targets = [*self.groups.values(), *self.ephemeral]

    def full_target(self, n: int) -> _Queue | None:
        """A target queue without room for ``n`` more messages, if any."""
        for q in self.groups.values():
            if len(q.items) + n > q.limit and not q.closed:
                return q
        for q in self.ephemeral:
            if len(q.items) + n > q.limit and not q.closed:
                return q
        return None


class _MemorySubscription(TopicGroup, AsyncCloseable):
    __slots__ = ("_closed", "_group", "_limit", "_owner", "_queue", "_topic")

    def __init__(self, owner: MemoryPubSub, topic: str, group: str | None, queue: _Queue) -> None:
        self._owner = owner
        self._topic = topic
        self._group = group
        self._queue = queue
        self._closed = False
        cfg = owner.config
        what = f"memory:// subscription to {topic!r}" + (f" (group {group!r})" if group else "")
        self._limit = Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        q = self._queue
        unsettled = self._limit
        items = q.items
        while True:
            if self._closed or q.closed:
                raise StopAsyncIteration
            if unsettled.count >= unsettled.cap:
                if items:
                    q.readers.wake()  # this one takes nothing: another member may
                await unsettled.wait()
            elif items:
                item = items.popleft()
                if len(item) == 2:  # no metadata: the common case, built in line
                    msg = _new(Message)
                    msg.payload, msg.id = item
                    msg.metadata = {}
                    msg._state = _PENDING
                    msg._on_settle = q.on_settle
                else:
                    msg = _message(item, q.on_settle)
                q.inflight[msg] = self
                unsettled.count += 1
                if q.space:
                    q.wake_space()
                return msg
            else:
                await q.readers.wait(q.items)

    async def close(self) -> None:
        """Release unsettled messages to the group (an ephemeral subscription drops
        them), end iteration."""
        if self._closed:
            return
        self._closed = True
        self._limit.close()
        q = self._queue
        if self._group is None:
            self._owner._drop_ephemeral(self._topic, q)
            for msg in list(q.inflight):
                msg._release()
            q.inflight.clear()
            q.close()
        else:
            q.release(self)
            # Wake our own waiters so they see we are closed; other members re-wait.
            q.readers.wake_all()
        self._owner._subs.discard(self)

    async def abort(self) -> None:
        """The crash hook for tests: the consumer died. Nothing it holds is settled;
        memory:// keeps no lease that could run out, so its unsettled messages go back
        to the group at once, as :meth:`close` does; settling them later does nothing."""
        await self.close()


class MemoryPubSub(AsyncStartCloseable):
    """In-process publisher and subscriber. See the module docstring for semantics."""

    capabilities = Capabilities(
        persistent=False,
        consumer_groups=True,
        ordering="global",
        redelivers_after_crash=True,
        replay=False,
        has_server=False,
    )

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self._topics: dict[str, _Topic] = {}
        self._subs: set[_MemorySubscription] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> MemoryPubSub:
        """Build from ``memory://?options`` (see :class:`MemoryConfig`); no I/O."""
        return cls(MemoryConfig.from_url(url))

    async def start(self) -> None:
        """Nothing to connect; present so every backend starts the same way."""

    async def publish(self, topic: str, *messages: Message) -> None:
        if self._closed:
            raise closed("memory://")
        t = self._topics.get(topic)
        if t is None:
            validate_name("topic", topic)
            t = self._topics[topic] = _Topic()
        check_messages(messages)
        n = len(messages)
        if not n:
            return
        targets = t.targets
        for q in targets:
            if len(q.items) + n > q.limit and not q.closed:
                await self._wait_for_room(topic, t, n)
                targets = t.targets
                break
        # Items are immutable: every target queues the same ones.
        if n == 1:
            m = messages[0]
            item = (m.payload, m.id) if not m.metadata else _item(m)
            for q in targets:
                if not q.closed:
                    q.items.append(item)
                    if q.readers:
                        q.readers.wake()
            return
        items = [_item(m) for m in messages]
        for q in targets:
            if not q.closed:
                q.items.extend(items)
                if q.readers:
                    q.readers.wake(n)  # one waiting reader per message, as many as there are

    async def _wait_for_room(self, topic: str, t: _Topic, n: int) -> None:
        """Apply the ``when_full`` policy until every target of ``t`` has room for ``n``."""
        while True:
            full = t.full_target(n)
            if full is None:
                return
            if n > self.config.buffer_size or self.config.when_full == "raise":
                raise BufferFullError(
                    f"memory:// buffer of topic {topic!r} is full "
                    f"({self.config.buffer_size} undelivered messages)"
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            full.space.append(fut)
            await fut
            if self._closed:
                raise closed("memory://")

    async def subscribe(self, topic: str, *, group: str | None = None) -> _MemorySubscription:
        if self._closed:
            raise closed("memory://")
        validate_name("topic", topic)
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = _Topic()
        if group is None:
            q = _Queue(self.config.buffer_size)
            t.ephemeral.add(q)
            t.changed()
        else:
            validate_name("group", group)
            found = t.groups.get(group)
            if found is None:
                found = t.groups[group] = _Queue(self.config.buffer_size)
                t.changed()
            q = found
        sub = _MemorySubscription(self, topic, group, q)
        self._subs.add(sub)
        return sub

    def _drop_ephemeral(self, topic: str, q: _Queue) -> None:
        t = self._topics.get(topic)
        if t is not None:
            t.ephemeral.discard(q)
            t.changed()
            q.wake_space()

    async def close(self) -> None:
        """Close every subscription (releasing unsettled messages); publishing then
        raises :class:`~eventmill.ClosedError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.close()
        for t in self._topics.values():
            for q in (*t.groups.values(), *t.ephemeral):
                q.close()

    async def abort(self) -> None:
        """The crash hook for tests: the process died. Every subscription aborts (see
        :meth:`_MemorySubscription.abort`) and the bus closes; in-process, what it held
        dies with it."""
        await self.close()
