"""asyncpg's errors, mapped to eventmill's at the postgresql:// boundary.

:func:`is_transient` tells a connection or server that went away (the runner
retries, on another connection); :func:`mapped` turns every other asyncpg or OS
error raised inside it into the eventmill error of the operation, ``raise ... from``
the original, with the redacted server address and never a password.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import asyncpg

from eventmill.errors import (
    ConfigurationError,
    EventmillError,
    PublishError,
    PubSubError,
    SubscribeError,
)

__all__ = ["is_transient", "mapped"]

#: What a failed operation raises, by the operation's name (others: PubSubError).
_ERRORS: Final[dict[str, type[PubSubError]]] = {
    "publish": PublishError,
    "subscribe": SubscribeError,
    "claim": SubscribeError,
}

#: Errors that retrying cannot fix: the settings are wrong.
_CONFIGURATION: Final = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server or connection went away; try again"."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in ("08", "57", "53") or state in ("40001", "40P01")
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc).lower()
        return "connection" in text and ("closed" in text or "lost" in text)
    if isinstance(exc, asyncpg.InternalClientError):
        # A connection the server ended while it sat idle (pg_terminate_backend, a
        # restart) is left mid-protocol until its end is read: the next statement on
        # it fails with this. The runner closes it; the retry takes another.
        return "cannot switch to state" in str(exc)
    return False


@contextlib.contextmanager
def mapped(what: str, where: str) -> Iterator[None]:
    """Map errors raised inside to eventmill's: transient ones and eventmill's own pass
    unchanged; bad credentials or database become :class:`ConfigurationError`; any
    other the error of operation ``what`` (see ``_ERRORS``) on server ``where``."""
    try:
        yield
    except EventmillError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        text = f"postgresql:// {what} failed on {where}: {type(exc).__name__}: {exc}"
        kind = ConfigurationError if isinstance(exc, _CONFIGURATION) else _ERRORS.get(what)
        raise (kind or PubSubError)(text) from exc
