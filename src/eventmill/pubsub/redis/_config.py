"""Settings of the redis:// backend and their URL form (private; see ``eventmill.pubsub.redis``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

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

__all__ = ["RedisConfig"]

#: Query options handed to redis-py unchanged (TLS and client identity), all others are ours.
_PASSTHROUGH = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "ssl_min_version",
        "client_name",
    }
)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Settings of :class:`~eventmill.pubsub.redis.RedisPubSub`.

    Every field except ``url`` can be given as a query option of the URL, e.g.
    ``redis://:secret@localhost:6379/0?maxlen=1000000&claim_idle=60``.
    """

    url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    """Where Redis is: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` for
    TLS, plus the TLS options redis-py understands (``ssl_cert_reqs``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ...). Never shown in reprs,
    logs or errors with its password (default ``redis://127.0.0.1:6379/0``)."""
    prefix: str = "eventmill:"
    """Key prefix: topic ``T`` is the stream at key ``prefix + T`` (default ``eventmill:``)."""
    maxlen: int | None = None
    """Approximate upper bound on each stream's length, applied on every ``XADD`` as
    ``MAXLEN ~ maxlen``: Redis trims whole macro-nodes, so a stream may hold somewhat
    more than ``maxlen`` entries, never fewer. Trimming deletes the oldest entries
    whether or not every group has read or acked them; see the README. ``None``
    (default; ``unlimited`` in a URL) keeps every entry (the stream is then bounded only
    by Redis memory)."""
    batch_size: int = 100
    """Most entries one ``XREADGROUP``/``XREAD``/``XAUTOCLAIM`` call fetches (default 100)."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more, and reads no more, until one is settled
    (default 1000; ``unlimited`` in a URL: no bound). A group subscription counts the
    entries it has read and not yet handed out, and acks not yet sent, against it too."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""
    block: Seconds = 2.0
    """Seconds one blocking read waits on the server for new entries before it asks
    again (the reads never poll in a loop; default 2.0). Must be below ``socket_timeout``."""
    claim_idle: Seconds = 30.0
    """Visibility timeout in seconds: an entry delivered to a group member and neither
    acked nor nacked for this long is claimed (``XAUTOCLAIM``) by a live member and
    delivered again. Covers consumers that died. A handler that runs longer than this
    may see its message delivered a second time (default 30.0)."""
    consumer_timeout: Seconds = 3600.0
    """Seconds after which a group member that has nothing pending and has not read is
    removed from the group (``XGROUP DELCONSUMER``) by the other members' periodic
    scan; this cleans up after crashed processes. A subscription that closes
    gracefully removes its own member at once (default 3600)."""
    publish_timeout: Seconds = 30.0
    """Seconds a ``publish`` keeps retrying while Redis is unreachable before it raises
    :class:`~eventmill.BackendUnavailableError` (default 30.0)."""
    publish_batch: int = 1_000
    """Most messages sent in one pipelined round trip; concurrent publishes share one
    (default 1000)."""
    max_pending_publishes: int = 10_000
    """Most messages waiting to be sent. When full, ``publish`` waits for room (the
    policy is to block, never to drop; default 10,000)."""
    reconnect_max_delay: Seconds = 2.0
    """Cap in seconds of the exponential backoff (from 0.05 s) between reconnect
    attempts of readers, ack flushes and publishes (default 2.0)."""
    socket_timeout: Seconds = 10.0
    """Seconds to wait for any reply before the connection is considered dead (default 10)."""
    connect_timeout: Seconds = 5.0
    """Seconds to wait for a TCP/TLS connection to be established (default 5)."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                f"redis:// url must start with redis:// or rediss://, got {redact_url(self.url)!r}"
            )
        if not isinstance(self.prefix, str):
            raise ConfigurationError("redis:// prefix must be a string")
        if self.maxlen is not None and self.maxlen < 1:
            raise ConfigurationError("redis:// maxlen must be at least 1 (or omitted)")
        check_unsettled("redis://", self.max_unsettled, self.stall_warning)
        for name in ("batch_size", "publish_batch", "max_pending_publishes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"redis:// {name} must be at least 1")
        for name in (
            "block",
            "claim_idle",
            "consumer_timeout",
            "publish_timeout",
            "reconnect_max_delay",
            "socket_timeout",
            "connect_timeout",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"redis:// {name} must be a positive number of seconds")
        if self.block >= self.socket_timeout:
            raise ConfigurationError("redis:// block must be shorter than socket_timeout")
        if self.consumer_timeout <= self.block:
            raise ConfigurationError("redis:// consumer_timeout must be longer than block")

    @property
    def safe_url(self) -> str:
        """``url`` with its password replaced by ``***``."""
        return redact_url(self.url)

    @classmethod
    def from_url(cls, url: str) -> RedisConfig:
        """Split ``url`` into the connection URL and eventmill's options; no I/O."""
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ConfigurationError(f"invalid redis:// url {redact_url(url)!r}") from None
        ours, passthrough = split_query(parts.query, _PASSTHROUGH)
        conn = parts._replace(query=urlencode(passthrough), fragment="").geturl()
        return apply_options(cls(url=conn), ours, scheme="redis://", fixed=("url",))
