"""Settings of the postgresql:// backend and their URL form."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from eventmill.errors import ConfigurationError
from eventmill.pubsub._options import (
    MAX_UNSETTLED,
    STALL_WARNING,
    Seconds,
    apply_options,
    check_unsettled,
    split_query,
)
from eventmill.pubsub.factory import redact_url

__all__ = ["PostgresConfig"]

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,39}")

#: libpq-style options passed on to asyncpg untouched.
_PASSTHROUGH = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "application_name",
        "target_session_attrs",
        "passfile",
        "host",
        "port",
        "user",
        "password",
        "dbname",
    }
)


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """Settings of :class:`~eventmill.pubsub.postgres.PostgresPubSub`.

    Every field except ``dsn`` can be given in the URL's query string, e.g.
    ``postgresql://app@db/app?schema=bus&visibility_timeout=60&retention=86400``.
    """

    dsn: str = "postgresql://localhost/postgres"
    """Connection URL handed to asyncpg (eventmill's own options removed)."""
    schema: str = "public"
    """Schema holding the tables; created if missing."""
    table_prefix: str = "eventmill_"
    """Prefix of the table names (``<prefix>messages``, ``groups``, ``leases``,
    ``topics``). Two buses with different prefixes never see each other's messages."""
    visibility_timeout: Seconds = 30.0
    """Seconds a delivered, unsettled message stays leased to its consumer. A live
    subscription renews the leases of the messages it holds every third of this; a
    consumer that died without settling loses them after at most this long, and they
    are delivered again."""
    poll_interval: Seconds = 1.0
    """Fallback: an idle consumer looks for work at least this often, even if no
    NOTIFY arrived (NOTIFY wakes it at once; a lease expiring wakes it too)."""
    prefetch: int = 500
    """Most messages one subscription leases in one claim (one lease row) and holds
    before handing them out. Larger claims cost less per message; smaller ones spread
    a backlog more evenly over the members of a group when handlers are slow."""
    claim_linger: Seconds = 0.005
    """Seconds a subscription whose last claim found fewer than ``prefetch`` messages
    waits (counted from that claim) before the next: in a steady stream, batches
    gather instead of being claimed a few messages at a time (a claim has a fixed
    cost). A consumer that found nothing claims at once when woken. ``0``: never wait."""
    publish_batch: int = 1000
    """Most messages committed by one group-commit transaction."""
    publish_workers: int = 2
    """Group-commit transactions in flight at once, each on its own connection.
    Concurrent publish calls queue and are committed together in the next one; a
    worker finding another slot free takes half the waiting calls and leaves the rest
    to a second transaction, so one commits while the publishers of the other run
    (each call still commits in exactly one transaction). ``1`` = strictly one."""
    max_pending: int = 10_000
    """Most messages waiting for a group commit. When full, ``publish`` waits for room
    (policy ``block``); a single call larger than this is still accepted alone."""
    ack_interval: Seconds = 0.02
    """Seconds settlements (ack/nack) wait to be flushed in one batch."""
    ack_batch: int = 1000
    """A batch of this many settlements is flushed without waiting for ``ack_interval``."""
    retention: Seconds | None = 7 * 24 * 3600.0
    """Seconds a message is kept after publishing once every group has acknowledged
    it (default 7 days; it is what a new group replays). ``None`` (``unlimited`` in a URL)
    keeps messages forever;
    ``0`` deletes them as soon as they are fully consumed (at the next cleanup)."""
    cleanup_interval: Seconds = 30.0
    """Seconds between retention passes (one process at a time runs each pass)."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more, and claims no more than it has room
    for, until one is settled (default 1000; ``unlimited`` in a URL: no bound)."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""
    ephemeral_buffer: int = 10_000
    """Most undelivered messages an ephemeral (group-less) subscription holds. When
    full, the oldest is dropped (and counted in a warning): a slow ephemeral reader
    never stalls publishers or other readers."""
    pool_min: int = 1
    """Connections the pool keeps open."""
    pool_max: int = 10
    """Most pooled connections (plus one dedicated LISTEN connection)."""
    connect_timeout: Seconds = 10.0
    """Seconds ``start()`` keeps trying to reach the server before raising
    :class:`~eventmill.BackendUnavailableError`."""
    reconnect_timeout: Seconds = 60.0
    """Seconds a publish keeps retrying while the server is unreachable before raising
    :class:`~eventmill.BackendUnavailableError`. Consumers and the LISTEN connection
    retry for as long as the bus is open."""
    reconnect_max_delay: Seconds = 2.0
    """Cap of the exponential backoff (from 50 ms, with jitter) between reconnect attempts."""

    def __post_init__(self) -> None:
        check_unsettled("postgresql://", self.max_unsettled, self.stall_warning)
        if _IDENT.fullmatch(self.schema) is None:
            raise ConfigurationError(
                "postgresql:// schema must be 1-40 characters of [a-z0-9_], not a digit first"
            )
        if _IDENT.fullmatch(self.table_prefix) is None:
            raise ConfigurationError(
                "postgresql:// table_prefix must be 1-40 characters of [a-z0-9_], not a digit first"
            )
        positive = (
            "visibility_timeout",
            "poll_interval",
            "cleanup_interval",
            "reconnect_max_delay",
        )
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"postgresql:// {name} must be a positive number")
        for name in ("ack_interval", "claim_linger", "connect_timeout", "reconnect_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"postgresql:// {name} must be a number >= 0")
        if self.retention is not None and not (
            math.isfinite(self.retention) and self.retention >= 0
        ):
            raise ConfigurationError("postgresql:// retention must be seconds >= 0 or 'none'")
        for name in (
            "prefetch",
            "publish_batch",
            "publish_workers",
            "max_pending",
            "ack_batch",
            "ephemeral_buffer",
            "pool_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"postgresql:// {name} must be at least 1")
        if not 0 <= self.pool_min <= self.pool_max:
            raise ConfigurationError("postgresql:// pool_min must be between 0 and pool_max")

    @classmethod
    def from_url(cls, url: str) -> PostgresConfig:
        """Parse ``postgresql://user:pass@host:port/db?option=value&...`` (no I/O).

        eventmill's options (the fields of this class) are taken out of the query;
        libpq connection options such as ``sslmode`` and ``application_name`` stay in
        the DSN for asyncpg; anything else is a :class:`~eventmill.ConfigurationError`.
        """
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ConfigurationError(f"invalid postgresql:// URL {redact_url(url)!r}") from exc
        scheme = parts.scheme.lower().split("+", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a postgresql:// URL: {redact_url(url)!r}")
        ours, keep = split_query(parts.query, _PASSTHROUGH)
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(keep), ""))
        return apply_options(cls(dsn=dsn), ours, scheme="postgresql://", fixed=("dsn",))
