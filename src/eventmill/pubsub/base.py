"""The pub/sub contract: Publisher, Subscriber, Subscription and Capabilities.

Every backend implements these; the conformance suite in ``tests/pubsub`` checks
that they hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

from typing_extensions import TypeIs

from eventmill.errors import InvalidNameError
from eventmill.message import Message

__all__ = [
    "Abortable",
    "Capabilities",
    "PubSub",
    "Publisher",
    "SkippingSubscriber",
    "Subscriber",
    "Subscription",
    "TransactionalPublisher",
    "check_messages",
    "validate_name",
]

_NAME = re.compile(r"(?!\.)(?!.*\.\.)[A-Za-z0-9_.\-]{1,200}(?<!\.)")
"""No dot first, last or twice in a row: NATS subjects take no empty token, and Kafka
refuses the topics ``.`` and ``..``."""


def validate_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid topic or group name, else raise InvalidNameError.

    Names are 1-200 characters of ``[A-Za-z0-9._-]``, without a dot first, last or
    next to another: the set every backend's server accepts (Kafka topics, NATS
    subjects, Redis keys, SQL values).
    """
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: use 1-200 characters of letters, digits, '.', "
            "'_', '-' (no '.' first, last or twice in a row)"
        )
    return name


def check_messages(messages: tuple[object, ...]) -> None:
    """Raise ``TypeError`` unless every item given to ``publish`` is a :class:`Message`
    whose payload is still ``bytes`` and whose metadata still maps ``str`` to ``str``
    (both are checked when a message is built, and may be changed afterwards)."""
    for m in messages:
        if type(m) is not Message and not isinstance(m, Message):
            raise TypeError(f"publish() takes Message objects, not {type(m).__name__}")
        if type(m.payload) is not bytes:
            raise TypeError(
                f"message {m.id}: payload must be bytes, not {type(m.payload).__name__}"
            )
        metadata = m.metadata
        if metadata:
            try:  # str.join refuses anything but str, at C speed (~60 ns for 5 entries)
                "".join(metadata)
                "".join(metadata.values())
            except TypeError:
                raise TypeError(f"message {m.id}: metadata must map str to str") from None


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend promises beyond the common contract.

    The conformance suite runs the tests a flag enables and skips, with the flag
    named, those it disables.
    """

    persistent: bool
    """Published messages survive the process (and the server) restarting."""
    consumer_groups: bool
    """Named groups: members of one group split the messages, each group gets all."""
    ordering: Literal["none", "per_key", "global"]
    """Order seen by a single consumer of a group: ``global`` (publish order of the
    topic), ``per_key`` (publish order among messages with the same partition key), or
    ``none``. Ordering never survives a nack: the nacked message comes again later."""
    redelivers_after_crash: bool
    """A message delivered to a consumer that vanished without settling it is
    delivered again (after the backend's visibility timeout)."""
    replay: bool
    """A group subscribing to a topic for the first time starts at the oldest
    retained message (not only at messages published after it subscribed)."""
    has_server: bool
    """The backend talks to a server that can go away and come back (reconnect tests)."""
    transactions: bool = False
    """``publish(topic, *messages, transaction=conn)`` inserts the messages in the
    caller's open database transaction (postgresql://, sqlite:///): they commit with
    the caller's other writes, or not at all. See :class:`TransactionalPublisher`."""


@runtime_checkable
class Subscription(Protocol):
    """An open subscription: an async iterator of :class:`Message`.

    * ``await sub.__anext__()`` may be called from many tasks at once; each message
      goes to exactly one of them. Iteration ends (``StopAsyncIteration``) once the
      subscription or its backend is closed.
    * The next message is handed out whether or not the previous one was settled,
      up to ``max_unsettled`` (a URL option of every backend, default 1000,
      ``unlimited`` allowed) handed out and not settled; at that bound ``__anext__``
      waits until one is settled, and a reader held there for ``stall_warning``
      seconds makes the subscription log one warning saying why. None is lost: a
      nack, or the consumer going away without settling, means redelivery
      (at-least-once).
    * ``close()`` flushes the settlements made so far (they land before it returns)
      and releases messages handed out but not settled, which are redelivered to
      the group (or, for an ephemeral subscription, dropped with it). Settling a
      message after its subscription closed has no effect. It never waits for a
      blocking read in progress, and with nothing to flush or release it makes no
      round trip to the server (kafka://: but for the LeaveGroup of a group
      member's last subscription), so it returns at once.
    """

    @property
    def topic(self) -> str: ...

    @property
    def group(self) -> str | None: ...

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Message: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Publisher(Protocol):
    """Publishes messages to topics.

    ``publish(topic, *messages)`` returns only after the backend has accepted every
    message (durably, where the backend is durable: committed to disk, acknowledged
    by the server). If it raises, the caller must assume none was published and may
    publish again; receivers drop duplicates by ``Message.id``. Messages published
    by one call, and by calls awaited one after another, keep their order within a
    partition key on backends that promise ordering. Safe to call from many tasks
    at once. ``close()`` waits for publishes in progress, then releases resources;
    publishing after it raises :class:`~eventmill.ClosedError`.
    """

    async def publish(self, topic: str, *messages: Message) -> None: ...

    async def close(self) -> None: ...


class TransactionalPublisher(Publisher, Protocol):
    """A publisher whose ``publish`` also takes the caller's open database transaction
    (``capabilities.transactions``: postgresql:// and sqlite:///).

    ``await bus.publish(topic, *messages, transaction=conn)`` inserts the messages
    through ``conn`` (the backend's driver connection, or a SQLAlchemy
    ``AsyncConnection`` or ``AsyncSession``, on the bus's database), inside the
    transaction holding the caller's other writes: they are published when it commits,
    and never if it rolls back or the process dies first. It returns once the insert
    ran, before the commit; consumers see the messages after the commit. A connection
    that would commit the insert on its own (autocommit) or belongs to another database
    is refused with :class:`~eventmill.PublishError`, an object of another kind with
    ``TypeError``.
    """

    async def publish(
        self, topic: str, *messages: Message, transaction: object | None = None
    ) -> None: ...


def supports_transactions(bus: object) -> TypeIs[TransactionalPublisher]:
    """Whether ``bus`` takes ``publish(..., transaction=conn)`` (its
    ``capabilities.transactions``: postgresql:// and sqlite:///), narrowing its type for
    type checkers (``TypeIs``: a ``PubSub`` keeps its other methods). ``isinstance(bus,
    TransactionalPublisher)`` cannot tell: a protocol check sees only that ``publish``
    exists, which every bus has."""
    capabilities = getattr(bus, "capabilities", None)
    return getattr(capabilities, "transactions", False) is True


@runtime_checkable
class Subscriber(Protocol):
    """Opens subscriptions to topics.

    ``subscribe(topic, group=name)`` joins the durable consumer group ``name``:
    members of one group split the messages between them, and every group gets
    every message. The group's position is kept while no member is connected.

    ``subscribe(topic)`` without a group is an ephemeral fan-out: the subscription
    sees every message published from the moment ``subscribe`` returned, and
    nothing is kept for it once it is closed.

    ``subscribe`` returns once the subscription is registered with the backend, so a
    message published after it returns is delivered to it. ``close()`` closes every
    subscription it opened (see :class:`Subscription`).
    """

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription: ...

    async def close(self) -> None: ...


@runtime_checkable
class SkippingSubscriber(Protocol):
    """Optional capability (ask with ``isinstance(bus, SkippingSubscriber)``): a group
    subscription that passes over marked messages inside the backend.

    ``subscribe_skipping(topic, group=g, skip=(key, value))`` is ``subscribe(topic,
    group=g)``, except that messages whose metadata has ``key`` set to ``value`` count
    as acked by the group at once: never leased, never handed out. Use it for messages
    every member of the group would ack unhandled; every member of the group should
    ask for the same ``skip``. A backend without it offers plain ``subscribe``, and the
    caller skips such messages itself.
    """

    async def subscribe_skipping(
        self, topic: str, *, group: str, skip: tuple[str, str]
    ) -> Subscription: ...


@runtime_checkable
class Abortable(Protocol):
    """The crash hook for tests, on every backend and every subscription: ``abort()``.

    ``await bus.abort()`` (or ``await subscription.abort()``) makes it vanish as if its
    process had been killed: nothing is settled or released, and its connections drop.
    Settlements not yet flushed are lost; messages it held are delivered again as
    after a real crash (once the backend's visibility timeout, lease or session runs
    out; memory:// keeps no lease, so at once); publishes in progress fail with
    :class:`~eventmill.ClosedError`. Afterwards it behaves as closed. Tests use it to
    check at-least-once delivery; an application closes (``close()``) instead.
    """

    async def abort(self) -> None: ...


@runtime_checkable
class PubSub(Publisher, Subscriber, Protocol):
    """A backend: both a publisher and a subscriber, and an async context manager."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
