"""Settings of the ``nats://`` backend, URL parsing and the topic → stream/subject naming."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
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

__all__ = ["NatsConfig", "consumer_name", "stream_name"]

_STREAM_NAME_MAX = 200
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_\-.]*")
_STREAM_PREFIX = re.compile(r"[A-Za-z0-9_\-]*")


def _escape(name: str) -> str:
    # Stream and consumer names may not contain '.', so map it injectively:
    # '_' -> '_5F' and '.' -> '_2E' (percent-encoding with '_' as the escape).
    if "_" in name:
        name = name.replace("_", "_5F")
    if "." in name:
        name = name.replace(".", "_2E")
    return name


def _bounded(name: str) -> str:
    if len(name) <= _STREAM_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name[: _STREAM_NAME_MAX - 17]}-{digest}"


def stream_name(prefix: str, topic: str) -> str:
    """The JetStream stream that holds ``topic``: ``prefix`` + the escaped topic.

    ``_`` becomes ``_5F`` and ``.`` becomes ``_2E`` (stream names may not contain
    dots), so distinct topics never share a stream: ``orders.created`` is stored in
    ``eventmill-orders_2Ecreated``. Names longer than 200 characters are cut and
    suffixed with a hash of the full name.
    """
    return _bounded(prefix + _escape(topic))


def consumer_name(group: str) -> str:
    """The durable consumer name of ``group`` (escaped like :func:`stream_name`)."""
    return _bounded(_escape(group))


@dataclass(frozen=True, slots=True)
class NatsConfig:
    """Settings of :class:`~eventmill.pubsub.nats.NatsPubSub`.

    Every field except the connection ones can be set in the URL's query string,
    e.g. ``nats://localhost:4222?ack_wait=10&max_deliver=5``.
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    """Server URLs without credentials (default ``nats://127.0.0.1:4222``)."""
    user: str | None = None
    """User name, from the URL's userinfo (default none)."""
    password: str | None = field(default=None, repr=False)
    """Password, from the URL's userinfo; never shown in reprs, logs or errors."""
    token: str | None = field(default=None, repr=False)
    """Auth token: a URL userinfo without ``:`` (``nats://TOKEN@host``); never shown."""
    name: str = "eventmill"
    """Client connection name shown by the server's monitoring (default ``eventmill``)."""

    # -- streams ---------------------------------------------------------------------------
    stream_prefix: str = "eventmill-"
    """Prefix of the stream created per topic (default ``eventmill-``; see ``stream_name``)."""
    subject_prefix: str = "eventmill."
    """Prefix of the subject a topic is published on: topic ``orders`` is the subject
    ``eventmill.orders`` (default ``eventmill.``; may be empty)."""
    storage: Literal["file", "memory"] = "file"
    """Stream storage: ``file`` survives a server restart, ``memory`` does not (default file)."""
    replicas: int = 1
    """Stream replicas in a cluster (default 1)."""
    max_age: Seconds | None = None
    """Seconds a message is retained; ``None`` (``unlimited`` in a URL) keeps it until
    another limit applies (default)."""
    max_msgs: int | None = None
    """Most messages a stream keeps; the oldest are discarded beyond it (default ``None``,
    ``unlimited`` in a URL: no limit)."""
    max_bytes: int | None = None
    """Most bytes a stream keeps; the oldest are discarded beyond it (default ``None``,
    ``unlimited`` in a URL: no limit)."""
    dedupe: bool = True
    """Send ``Message.id`` as ``Nats-Msg-Id``, so the server drops a message re-published
    with the same id within ``duplicate_window`` (this makes publish retries exact)."""
    duplicate_window: Seconds = 120.0
    """Seconds the server remembers message ids for ``dedupe`` (default 120)."""

    # -- publishing ------------------------------------------------------------------------
    publish_timeout: Seconds = 5.0
    """Seconds to wait for the server's PubAck before re-sending a message (default 5)."""
    publish_deadline: Seconds = 30.0
    """Seconds ``publish`` keeps retrying (server away, stream unavailable) before it
    raises :class:`~eventmill.PublishError` (default 30)."""
    max_pending: int = 4000
    """Most messages awaiting a PubAck per connection; further publishes wait for room
    (policy when full: block, default 4000)."""

    # -- consuming -------------------------------------------------------------------------
    ack_wait: Seconds = 30.0
    """Seconds the server waits for an ack before it redelivers a message (default 30)."""
    max_deliver: int | None = None
    """Most deliveries of a message (first one included); after that the server stops
    delivering it to the group (default ``None``, ``unlimited`` in a URL: no limit)."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more until one is settled (default 1000;
    ``unlimited`` in a URL: no bound). It is also the consumer's ``max_ack_pending``,
    which the server applies to the whole group: the members of a group together
    hold at most this many unsettled (those received and not yet handed out count)."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""
    batch: int = 100
    """Messages requested per pull (fetch) and held in the local buffer (default 100;
    at most ``max_unsettled``)."""
    fetch_timeout: Seconds = 5.0
    """Seconds a pull request lingers on the server waiting for messages (default 5)."""
    nak_delay: Seconds = 0.0
    """Seconds the server waits before redelivering a nacked message (default 0: at once)."""
    inactive_threshold: Seconds = 60.0
    """Seconds after which the server removes an ephemeral (group-less) consumer whose
    client vanished (default 60)."""

    # -- connection ------------------------------------------------------------------------
    connect_timeout: Seconds = 5.0
    """Seconds ``start()`` tries to connect before raising
    :class:`~eventmill.BackendUnavailableError` (default 5)."""
    reconnect_min_delay: Seconds = 0.1
    """First delay before reconnecting after the connection dropped, and before retrying
    a publish, a subscribe, a pull or an ack; doubles per failed attempt, with jitter
    (default 0.1 s)."""
    reconnect_max_delay: Seconds = 2.0
    """Cap of that backoff; reconnecting never gives up (default 2 s)."""

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigurationError("nats:// needs at least one server")
        if self.storage not in ("file", "memory"):
            raise ConfigurationError("nats:// storage must be 'file' or 'memory'")
        if _STREAM_PREFIX.fullmatch(self.stream_prefix) is None:
            raise ConfigurationError("nats:// stream_prefix may only contain [A-Za-z0-9_-]")
        if _SUBJECT_PREFIX.fullmatch(self.subject_prefix) is None or (
            self.subject_prefix and not self.subject_prefix.endswith(".")
        ):
            raise ConfigurationError(
                "nats:// subject_prefix must be empty or end with '.' "
                "and contain only [A-Za-z0-9._-]"
            )
        for name in ("replicas", "batch", "max_pending"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"nats:// {name} must be at least 1")
        check_unsettled("nats://", self.max_unsettled, self.stall_warning)
        for name in ("max_deliver", "max_msgs", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"nats:// {name} must be at least 1 (or unlimited)")
        if self.max_age is not None and not self.max_age > 0:
            raise ConfigurationError("nats:// max_age must be a positive number of seconds")
        positive = (
            "ack_wait",
            "connect_timeout",
            "fetch_timeout",
            "inactive_threshold",
            "publish_deadline",
            "publish_timeout",
            "reconnect_max_delay",
            "reconnect_min_delay",
            "duplicate_window",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"nats:// {name} must be a positive number of seconds")
        if self.nak_delay < 0:
            raise ConfigurationError("nats:// nak_delay must not be negative")
        if self.reconnect_max_delay < self.reconnect_min_delay:
            raise ConfigurationError("nats:// reconnect_max_delay must be >= reconnect_min_delay")

    @classmethod
    def from_url(cls, url: str) -> NatsConfig:
        """Parse ``nats://[user:password@|token@]host[:port][,host2[:port]]...[?options]``.

        ``tls://`` instead of ``nats://`` connects with TLS. Options are the fields
        of this class, read by :mod:`eventmill.pubsub._options`.
        """
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ConfigurationError("nats:// URL cannot be parsed") from None
        scheme = parts.scheme.lower()
        if scheme not in ("nats", "tls"):
            raise ConfigurationError(f"nats:// backend cannot use the {scheme}:// scheme")
        netloc = parts.netloc
        user = password = token = None
        if "@" in netloc:
            userinfo, _, netloc = netloc.rpartition("@")
            if ":" in userinfo:
                raw_user, _, raw_password = userinfo.partition(":")
                user, password = unquote(raw_user), unquote(raw_password)
            else:
                token = unquote(userinfo)
        hosts = [h for h in netloc.split(",") if h] or ["127.0.0.1:4222"]
        servers = []
        for host in hosts:
            if ":" not in host.rsplit("]", 1)[-1]:
                host = f"{host}:4222"
            servers.append(f"{scheme}://{host}")

        base = cls(servers=tuple(servers), user=user, password=password, token=token)
        options, _ = split_query(parts.query)
        fixed = ("servers", "user", "password", "token")
        return apply_options(base, options, scheme="nats://", fixed=fixed)
