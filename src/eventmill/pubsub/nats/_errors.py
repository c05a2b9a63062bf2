"""nats-py's errors, mapped to eventmill's at the nats:// boundary.

:data:`TRANSIENT` errors mean the server is away or restarting: callers retry them.
:func:`mapped` turns every other nats-py error raised inside it (and a publish the
server refused, :class:`PublishRejectedError`) into the eventmill error its caller
names, ``raise ... from`` the original; a connection closed for good becomes
:class:`~eventmill.ClosedError`.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

from eventmill.errors import EventmillError, PubSubError
from eventmill.pubsub._errors import Mapped, closed, describe

__all__ = ["TRANSIENT", "AckTimeoutError", "PublishRejectedError", "mapped", "translate"]

#: Errors after which an operation is tried again (the server is away or restarting).
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    OSError,
)


class AckTimeoutError(TimeoutError):
    """No PubAck came within ``publish_timeout``: the message is sent again."""


class PublishRejectedError(Exception):
    """One message's PubAck was an error that retrying cannot fix."""


def translate(exc: BaseException, what: str, error: type[PubSubError]) -> BaseException:
    """The eventmill error for ``exc`` (``"nats: <what>: <exc>"``), or ``exc`` itself if
    it is transient, eventmill's own, or not a client error."""
    if isinstance(exc, (*TRANSIENT, EventmillError)):
        return exc
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return closed("nats://")
    if isinstance(exc, nats.errors.Error | PublishRejectedError):
        return error(f"nats: {what}: {describe(exc)}")
    return exc


def mapped(what: str, error: type[PubSubError]) -> Mapped:
    """Raise :func:`translate`'s error for what is raised inside (see the module docstring)."""
    return Mapped(translate, what, error)
