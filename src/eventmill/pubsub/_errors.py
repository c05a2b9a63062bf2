"""Errors every backend raises alike: the closed error and a client error's description."""

from __future__ import annotations

from eventmill.errors import ClosedError

__all__ = ["closed", "describe"]


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
