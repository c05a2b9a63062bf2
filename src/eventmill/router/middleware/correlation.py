"""CorrelationID: carry a correlation id from a message to the messages it causes.

The id is read from the incoming message's metadata (key ``config.metadata_key``,
default ``"correlation_id"``); a message without one gets a new id (stored in its
metadata too, so inner middleware and the handler see it). Every message the
handler returns gets the same id unless it already has one. While the handler
runs, :func:`correlation_id` returns it, so messages the handler publishes itself
can carry it as well. Place CorrelationID outermost.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from eventmill.message import Message, new_message_id
from eventmill.router.handler import Handler, HandlerResult

__all__ = ["CORRELATION_ID_KEY", "CorrelationID", "CorrelationIDConfig", "correlation_id"]

CORRELATION_ID_KEY = "correlation_id"
"""The default metadata key of the correlation id."""

_current: ContextVar[str | None] = ContextVar("eventmill_correlation_id", default=None)


def correlation_id() -> str | None:
    """The correlation id of the message being handled in this task, else ``None``."""
    return _current.get()


@dataclass(frozen=True, slots=True)
class CorrelationIDConfig:
    """Settings of :class:`CorrelationID`."""

    metadata_key: str = CORRELATION_ID_KEY
    """Metadata key holding the id (default ``"correlation_id"``)."""
    new_id: Callable[[], str] = new_message_id
    """Makes an id for a message that has none (default: 32 random hex characters)."""


class CorrelationID:
    """Middleware propagating the correlation id; see the module docstring."""

    def __init__(self, config: CorrelationIDConfig | None = None) -> None:
        self.config = config or CorrelationIDConfig()

    def __call__(self, handler: Handler) -> Handler:
        key = self.config.metadata_key
        new_id = self.config.new_id

        async def correlate(msg: Message) -> HandlerResult:
            cid = msg.metadata.get(key)
            if not cid:
                cid = msg.metadata[key] = new_id()
            token = _current.set(cid)
            try:
                result = await handler(msg)
            finally:
                _current.reset(token)
            if result is None:
                return None
            if isinstance(result, Message):
                result.metadata.setdefault(key, cid)
                return result
            for m in result:
                m.metadata.setdefault(key, cid)
            return result

        return correlate
