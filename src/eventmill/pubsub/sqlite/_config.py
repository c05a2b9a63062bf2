"""Settings of the sqlite:// backend and their parsing from the URL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from eventmill.errors import ConfigurationError
from eventmill.pubsub._options import (
    MAX_UNSETTLED,
    STALL_WARNING,
    Seconds,
    apply_options,
    check_unsettled,
    split_query,
)

__all__ = ["SQLiteConfig"]


@dataclass(frozen=True, slots=True)
class SQLiteConfig:
    """Settings of :class:`~eventmill.pubsub.sqlite.SQLitePubSub`.

    URL form: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the
    SQLAlchemy convention: what follows the third slash is the path), with any field
    below except ``path`` as a query option, e.g.
    ``sqlite:////var/lib/eventmill/bus.db?synchronous=normal&visibility_timeout=5``.
    """

    path: str
    """Database file; created with its tables if missing (its directory must exist)."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite ``PRAGMA synchronous`` in WAL mode (default ``full``). ``full``: every
    commit fsyncs the write-ahead log, so a message whose ``publish`` returned
    survives a process kill AND an OS crash or power loss. ``normal``: the log is
    fsynced only at checkpoints; a returned ``publish`` survives a process kill,
    but the last commits before an OS crash or power loss may be rolled back (the
    file stays consistent). Group commit makes ``full`` cheap enough to be the default.
    With ``normal``, publishes are committed on the event loop's thread (no hand-off
    to the writer thread) unless the file is locked.
    It applies to transactions that hold publishes; the others (leases, acks, nacks,
    releases, cursors) always use ``normal``: an OS crash can only make them
    forget recent settlements, which means redelivery, never loss, and the next
    fsynced commit persists them too (the log is written in order)."""
    visibility_timeout: Seconds = 30.0
    """Seconds after which a message leased to a consumer that stopped renewing its
    leases (its process died) is delivered again (default 30). A live subscription
    renews its leases every third of this, so a slow handler is not duplicated."""
    poll_interval: Seconds = 0.1
    """Seconds an idle subscription waits before looking for messages published by
    other processes or leases that expired (default 0.1). Publishes made through
    this process wake local subscriptions at once, without waiting."""
    prefetch: int = 100
    """Most messages a subscription leases ahead of its readers (default 100); it
    refills when half are handed out. Each fetch takes at most this many."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more, and leases no more than it has room
    for, until one is settled (default 1000; ``unlimited`` in a URL: no bound)."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""
    retention: Seconds | None = 3600.0
    """Seconds a message acked by every consumer group of its topic (or, on a
    topic without groups, any message) is kept, so a new group can replay it
    (default 3600). ``0`` deletes as soon as the sweep runs; ``None`` (``unlimited`` in
    a URL) never deletes."""
    max_age: Seconds | None = None
    """Seconds after which a message is deleted even if some group has not acked it
    (default ``None``: never; ``unlimited`` in a URL). Set it when a group may be
    abandoned, or the file grows."""
    sweep_interval: Seconds = 10.0
    """Seconds between retention sweeps (default 10); each deletes in chunks of
    5,000 rows, one short transaction per chunk."""
    busy_timeout: Seconds = 5.0
    """Seconds to wait for another process's write lock before an operation fails
    with :class:`~eventmill.PublishError` or :class:`~eventmill.SubscribeError` (default 5)."""
    max_batch: int = 10_000
    """Most published messages one group-commit transaction takes (default 10,000);
    a single ``publish`` call is never split, whatever its size."""
    max_pending: int = 100_000
    """Most published messages waiting for the writer (default 100,000). When it is
    reached, ``publish`` waits (blocks the caller, drops nothing) until the writer
    has committed enough to make room."""

    def __post_init__(self) -> None:
        if not self.path or self.path == ":memory:" or self.path.startswith("file:"):
            raise ConfigurationError(
                "sqlite:// needs a database file path, e.g. sqlite:///bus.db "
                "(for an in-process bus use memory://)"
            )
        if self.synchronous not in ("full", "normal"):
            raise ConfigurationError("sqlite:// synchronous must be 'full' or 'normal'")
        _positive("visibility_timeout", self.visibility_timeout)
        _positive("poll_interval", self.poll_interval)
        _positive("sweep_interval", self.sweep_interval)
        _positive("busy_timeout", self.busy_timeout)
        if self.retention is not None:
            _positive("retention", self.retention, allow_zero=True)
        if self.max_age is not None:
            _positive("max_age", self.max_age)
        check_unsettled("sqlite://", self.max_unsettled, self.stall_warning)
        for name in ("prefetch", "max_batch", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"sqlite:// {name} must be an integer of at least 1")

    @classmethod
    def from_url(cls, url: str) -> SQLiteConfig:
        """Parse ``sqlite:///path.db?option=value&...``; raise ConfigurationError if invalid."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ConfigurationError(f"invalid sqlite:// URL: {exc}") from exc
        if parts.scheme.lower() != "sqlite":
            raise ConfigurationError(f"not a sqlite:// URL (scheme {parts.scheme!r})")
        if parts.netloc:
            raise ConfigurationError(
                f"sqlite:// URL has a host part {parts.netloc!r}: use sqlite:///relative.db "
                "or sqlite:////absolute/path.db (three or four slashes)"
            )
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        options, _ = split_query(parts.query)
        return apply_options(cls(path=path), options, scheme="sqlite://", fixed=("path",))


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    bad = (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    )
    if bad:
        which = "zero or more" if allow_zero else "more than zero"
        raise ConfigurationError(f"sqlite:// {name} must be a number of seconds, {which}")
