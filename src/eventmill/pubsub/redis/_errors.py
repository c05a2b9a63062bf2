"""redis-py's errors, mapped to eventmill's at the redis:// boundary.

:data:`TRANSIENT` errors mean Redis is away, restarting or loading: callers retry
them, and give up with :func:`unavailable`. :func:`mapped` turns every other
redis-py error raised inside it into the eventmill error its caller names,
``raise ... from`` the original. Every text carries the redacted URL and never the
password (:func:`describe`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import redis.exceptions as rex

from eventmill.errors import BackendUnavailableError, PubSubError
from eventmill.pubsub.redis._config import RedisConfig

__all__ = ["TRANSIENT", "describe", "mapped", "scrubbed", "unavailable"]

#: Errors after which the same command may succeed later (server away, restarting, loading).
TRANSIENT: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.BusyLoadingError,
    rex.TryAgainError,
    OSError,
)


def scrubbed(text: str, config: RedisConfig) -> str:
    """Return ``text`` with the configured password (if any) replaced by ``***``."""
    password = urlsplit(config.url).password
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def describe(exc: BaseException, config: RedisConfig) -> str:
    """``Type: message`` of a client error, safe to show."""
    return scrubbed(f"{type(exc).__name__}: {exc}", config)


def unavailable(exc: BaseException, config: RedisConfig, action: str) -> BackendUnavailableError:
    """The error for giving up after transient errors: Redis is unavailable."""
    return BackendUnavailableError(
        f"redis:// {action} failed: Redis at {config.safe_url} is unavailable "
        f"({describe(exc, config)})"
    )


@contextlib.contextmanager
def mapped(action: str, error: type[PubSubError], config: RedisConfig) -> Iterator[None]:
    """Raise ``error`` for a redis-py error raised inside; transient ones pass unchanged."""
    try:
        yield
    except TRANSIENT:
        raise
    except rex.RedisError as exc:
        raise error(f"redis:// {action} failed: {describe(exc, config)}") from exc
