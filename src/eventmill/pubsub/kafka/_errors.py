"""aiokafka's errors, mapped to eventmill's at the kafka:// boundary.

:func:`retriable` tells an error that may pass (a broker away, a leader moving):
publish retries those until ``publish_timeout``. :func:`mapped` turns every other
aiokafka, OS or timeout error raised inside it into the eventmill error its caller
names, ``raise ... from`` the original (aiokafka's texts carry no secrets).
"""

from __future__ import annotations

from types import TracebackType

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError, NodeNotReadyError

from eventmill.errors import EventmillError, PubSubError
from eventmill.pubsub._errors import describe

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


def mapped(what: str, error: type[PubSubError], *, retry: bool = False) -> _Mapped:
    """Raise :func:`translate`'s error for what is raised inside; with ``retry``, leave
    :func:`retriable` errors and timeouts to the caller's retry loop."""
    return _Mapped(what, error, retry)


class _Mapped:
    """:func:`mapped`'s context manager: a plain class, not a generator, as every publish
    enters one (a generator-based one cost about 2.5 µs a call)."""

    __slots__ = ("error", "retry", "what")

    def __init__(self, what: str, error: type[PubSubError], retry: bool) -> None:
        self.what = what
        self.error = error
        self.retry = retry

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not isinstance(exc, Exception):
            return  # no error, or not an Exception (a cancellation): it goes on unchanged
        if self.retry and (retriable(exc) or isinstance(exc, TimeoutError)):
            return
        new = translate(exc, self.what, self.error)
        if new is not exc:
            raise new from exc
