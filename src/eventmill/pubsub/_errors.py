"""Errors every backend raises alike: the closed error and a client error's description."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from eventmill.errors import ClosedError, PubSubError

__all__ = ["Mapped", "closed", "describe"]


def closed(scheme: str, what: str = "pubsub") -> ClosedError:
    """The error for using a closed or aborted bus (or ``what``): "<scheme> <what> is closed"."""
    return ClosedError(f"{scheme} {what} is closed")


def describe(exc: BaseException) -> str:
    """``Type: message`` of a client error, or ``Type`` alone when it has no message.

    For errors of client libraries whose texts carry no secrets (aiokafka, nats-py);
    redis:// scrubs its password from them first.
    """
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name


Translate = Callable[[BaseException, str, type[PubSubError]], BaseException]


class Mapped:
    """A backend's error mapping as a context manager: an ``Exception`` raised inside
    becomes ``translate(exc, what, error)`` (``raise ... from`` it) unless ``passes(exc)``
    (left unchanged for the caller's retry loop) or ``translate`` returns it as it is.
    A plain class, not a generator: publishes enter one per call, and a generator-based
    context manager cost about 2.5 µs a call."""

    __slots__ = ("error", "passes", "translate", "what")

    def __init__(
        self,
        translate: Translate,
        what: str,
        error: type[PubSubError],
        passes: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self.translate = translate
        self.what = what
        self.error = error
        self.passes = passes

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not isinstance(exc, Exception):
            return  # no error, or not an Exception (a cancellation): it goes on unchanged
        if self.passes is not None and self.passes(exc):
            return
        new = self.translate(exc, self.what, self.error)
        if new is not exc:
            raise new from exc
