"""The one exception tree of eventmill.

Every error eventmill raises on purpose derives from :class:`EventmillError`. This
module holds the library's errors (layers 1-3: messages, pub/sub, router, events);
the store's errors live in :mod:`eventmill.store.errors` and the service's HTTP
errors in :mod:`eventmill.web.errors`, both below the same root.
Client-library errors (redis, asyncpg, nats, aiokafka, sqlite3, httpx) are
translated at the boundary with ``raise ... from exc``; their messages never
carry passwords or secrets.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BufferFullError",
    "CircuitOpenError",
    "ClosedError",
    "ConfigurationError",
    "EventValidationError",
    "EventmillError",
    "HandlerError",
    "HandlerTimeoutError",
    "InvalidNameError",
    "PubSubError",
    "PublishError",
    "RouterError",
    "SubscribeError",
    "UnknownEventError",
]


class EventmillError(Exception):
    """Root of every error eventmill raises."""


class ConfigurationError(EventmillError):
    """A URL, option or setting is invalid (bad scheme, bad value, missing secret)."""


# -- layer 1: messages and pub/sub ------------------------------------------------------


class InvalidNameError(ConfigurationError, ValueError):
    """A topic or group name is empty, too long or has characters outside ``[A-Za-z0-9._-]``."""


class PubSubError(EventmillError):
    """Base of errors raised by publishers, subscribers and backends."""


class ClosedError(PubSubError):
    """The publisher, subscriber or subscription was already closed."""


class BackendUnavailableError(PubSubError):
    """The backend's server cannot be reached (after the configured retries)."""


class PublishError(PubSubError):
    """The backend did not accept the messages; none of them may be assumed published."""


class SubscribeError(PubSubError):
    """A subscription could not be created or continued."""


class BufferFullError(PublishError):
    """A bounded buffer was full and the configured policy is to raise, not to block."""


# -- layer 2: router ---------------------------------------------------------------------


class RouterError(EventmillError):
    """The router is misconfigured (duplicate handler name, run twice, ...)."""


class HandlerError(EventmillError):
    """A handler failed; raised by middleware that gives up (timeout, open circuit, ...)."""


class HandlerTimeoutError(HandlerError, TimeoutError):
    """A handler ran longer than the Timeout middleware allows and was cancelled."""


class CircuitOpenError(HandlerError):
    """The CircuitBreaker middleware is open: the handler was not called."""


# -- layer 3: events ---------------------------------------------------------------------


class EventValidationError(EventmillError):
    """An event (or its payload) does not match the envelope or the model registered for it.

    ``field`` is the dotted path of the first failing field (e.g.
    ``"payload.payment.entity.amount"``), or ``None`` when the whole input is wrong
    (not JSON, not an object). ``errors`` lists every failure as
    ``{"field": ..., "message": ..., "type": ...}`` dicts; neither ever holds input values.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.errors: list[dict[str, str]] = list(errors or [])


class UnknownEventError(EventValidationError):
    """An event name has no registered model and the registry rejects unknown names."""
