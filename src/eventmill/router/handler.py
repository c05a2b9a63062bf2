"""Handler and middleware types, and the per-handler context middleware can read.

A handler is any ``async`` callable taking one :class:`~eventmill.Message`:

* returning ``None`` (or an empty sequence) means "processed": the router acks;
* returning a :class:`~eventmill.Message` or a sequence of them means "processed,
  and these are the results": the router publishes them to the handler's
  ``publish_topic``, then acks (if publishing fails, it nacks instead);
* raising means "failed": the router nacks, so the message is delivered again.

Middleware is a ``Callable[[Handler], Handler]``: it gets the next handler and
returns one that wraps it. It is applied once, when the handler is added (never per
message). A middleware may settle the message itself (e.g. the poison queue acks
after parking a message); the router's own ack/nack is then a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from eventmill.message import Message

__all__ = ["Handler", "HandlerInfo", "HandlerResult", "Middleware", "current_handler"]

HandlerResult = Message | Sequence[Message] | None
"""What a handler returns: nothing, one message or a sequence of messages to publish."""

Handler = Callable[[Message], Awaitable[HandlerResult]]
"""An async callable that processes one message (see the module docstring)."""

Middleware = Callable[[Handler], Handler]
"""Wraps a handler; applied once when the handler is added to a router."""


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """What the router knows about the handler now running (see :func:`current_handler`)."""

    name: str
    """The handler's unique name within its router."""
    topic: str
    """The topic it consumes."""
    group: str | None
    """Its consumer group, or ``None`` for an ephemeral (fan-out) subscription."""
    publish_topic: str | None
    """Where the messages it returns are published, or ``None``."""


_current: ContextVar[HandlerInfo | None] = ContextVar("eventmill_handler", default=None)


def current_handler() -> HandlerInfo | None:
    """Return the handler whose message is being processed in this task, else ``None``.

    The router sets it once per worker task, so reading it costs one context lookup
    and nothing is done per message. Middleware uses it to name the handler in logs
    and poison-queue metadata; it is ``None`` when a handler is called outside a
    router (e.g. in a unit test).
    """
    return _current.get()
