"""aiokafka's errors, mapped to eventmill's at the kafka:// boundary.

:func:`retriable` tells an error that may pass (a broker away, a leader moving):
publish retries those until ``publish_timeout``. :func:`mapped` turns every other
aiokafka, OS or timeout error raised inside it into the eventmill error its caller
names, ``raise ... from`` the original (aiokafka's texts carry no secrets).
"""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError

from eventmill.errors import EventmillError, PubSubError
from eventmill.pubsub._errors import Mapped, describe

__all__ = ["mapped", "retriable", "translate"]

_UNAVAILABLE = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError, OSError)


def retriable(exc: BaseException) -> bool:
    """Whether the same request may succeed later (the broker is away, a leader moves)."""
    return isinstance(exc, KafkaError) and (isinstance(exc, _UNAVAILABLE) or bool(exc.retriable))


def translate(exc: BaseException, what: str, error: type[PubSubError]) -> BaseException:
    """The eventmill error for a client error ``exc`` (``"kafka:// <what> (<exc>)"``);
    anything else is returned as it is."""
    if isinstance(exc, EventmillError) or not isinstance(exc, KafkaError | OSError | TimeoutError):
        return exc
    return error(f"kafka:// {what} ({describe(exc)})")


def mapped(what: str, error: type[PubSubError], *, retry: bool = False) -> Mapped:
    """Raise :func:`translate`'s error for what is raised inside; with ``retry``, leave
    :func:`retriable` errors and timeouts to the caller's retry loop."""
    return Mapped(translate, what, error, _retry_passes if retry else None)


def _retry_passes(exc: BaseException) -> bool:
    return retriable(exc) or isinstance(exc, TimeoutError)
