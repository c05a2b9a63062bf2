"""PoisonQueue: park a message its handler cannot process on a poison topic, then ack.

When the wrapped handler raises (and ``config.should_poison`` agrees), a copy of the
message (same id, payload and metadata) is published to ``config.topic`` with three
metadata fields added: :data:`POISON_REASON_KEY` (the exception type and text),
:data:`POISON_HANDLER_KEY` (the handler's name) and :data:`POISON_TOPIC_KEY` (the
topic it came from). Then the original is acked, so the handler moves on. If the
poison publish fails, :class:`~eventmill.HandlerError` propagates and the router
nacks: the message is never lost.

Place PoisonQueue outside Retry (``add_middleware(PoisonQueue(bus), Retry())``) so
only messages that failed every retry are parked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from eventmill.errors import CircuitOpenError, HandlerError
from eventmill.message import Message
from eventmill.pubsub.base import Publisher, validate_name
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = [
    "POISON_HANDLER_KEY",
    "POISON_REASON_KEY",
    "POISON_TOPIC_KEY",
    "PoisonQueue",
    "PoisonQueueConfig",
]

POISON_REASON_KEY = "eventmill_poison_reason"
"""Metadata key: why the message was parked (``"ExceptionType: text"``, ≤ 1,000 chars)."""
POISON_HANDLER_KEY = "eventmill_poison_handler"
"""Metadata key: the name of the handler that failed (``""`` outside a router)."""
POISON_TOPIC_KEY = "eventmill_poison_topic"
"""Metadata key: the topic the message was consumed from (``""`` outside a router)."""

_REASON_LIMIT = 1000
_log = logging.getLogger("eventmill.router.poison")


def _not_circuit_open(exc: Exception) -> bool:
    """Every failure but :class:`~eventmill.CircuitOpenError`: an open circuit says the
    handler's dependency is down, not that the message is bad, so it goes back."""
    return not isinstance(exc, CircuitOpenError)


@dataclass(frozen=True, slots=True)
class PoisonQueueConfig:
    """Settings of :class:`PoisonQueue`."""

    topic: str = "poison"
    """Topic the failed messages are published to (default ``"poison"``)."""
    should_poison: Callable[[Exception], bool] = _not_circuit_open
    """Predicate on the exception: ``False`` lets it propagate (the router nacks, so
    the message is redelivered) instead of parking the message (default: park on
    every exception but :class:`~eventmill.CircuitOpenError`, so an open
    CircuitBreaker inside it gives messages back instead of parking them all)."""

    def __post_init__(self) -> None:
        validate_name("topic", self.topic)


class PoisonQueue:
    """Middleware parking failed messages on a poison topic; see the module docstring."""

    def __init__(self, publisher: Publisher, config: PoisonQueueConfig | None = None) -> None:
        self.publisher = publisher
        self.config = config or PoisonQueueConfig()

    def __call__(self, handler: Handler) -> Handler:
        publish = self.publisher.publish
        topic = self.config.topic
        should_poison = self.config.should_poison

        async def poison(msg: Message) -> HandlerResult:
            try:
                return await handler(msg)
            except Exception as exc:
                if not should_poison(exc):
                    raise
                info = current_handler()
                parked = msg.copy()
                reason = f"{type(exc).__name__}: {exc}"
                parked.metadata[POISON_REASON_KEY] = reason[:_REASON_LIMIT]
                parked.metadata[POISON_HANDLER_KEY] = info.name if info else ""
                parked.metadata[POISON_TOPIC_KEY] = info.topic if info else ""
                try:
                    await publish(topic, parked)
                except Exception as pexc:
                    raise HandlerError(
                        f"message {msg.id} failed ({reason[:200]}) and could not be "
                        f"published to poison topic {topic!r}: {pexc!r}"
                    ) from pexc
                _log.warning("message %s parked on poison topic %r: %s", msg.id, topic, reason)
                msg.ack()
                return None

        return poison
