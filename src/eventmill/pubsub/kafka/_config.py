"""Settings of the kafka:// backend and their URL form."""

from __future__ import annotations

from dataclasses import dataclass
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

__all__ = ["KafkaConfig"]


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Settings of :class:`KafkaPubSub`; each can be given as a URL query option."""

    bootstrap_servers: str = "localhost:9092"
    """Comma-separated ``host:port`` list (the URL's host part)."""
    key: str = "partition_key"
    """Metadata field whose value is the record key (partition and per-key order)."""
    partitions: int = 4
    """Partitions of topics eventmill creates on first use (existing topics are kept)."""
    replication_factor: int = 1
    """Replication factor of topics eventmill creates."""
    client_id: str = "eventmill"
    """Client id sent to the broker (shows in its logs and quotas)."""
    linger_ms: int = 0
    """How long a producer waits to fill a batch before sending it. 0 suits many
    concurrent awaiting publishers: aiokafka keeps one request in flight per broker,
    and records queue into the next batch while it is out."""
    max_batch_size: int = 262_144
    """Largest producer batch per partition, in bytes."""
    max_request_size: int = 1_048_576
    """Largest produce request, in bytes (the largest message must fit)."""
    producers: int = 1
    """Producer clients in the pool. aiokafka keeps one produce request in flight per
    broker and client; several clients (each owning a fixed share of the partitions,
    so per-partition order holds) overlap requests, which can help against a
    multi-broker cluster (against one Tansu broker, 1 measured fastest)."""
    publish_timeout: Seconds = 30.0
    """Seconds a ``publish`` keeps retrying after lost connections before it raises."""
    max_unsettled: int | None = MAX_UNSETTLED
    """Most messages one subscription hands out and holds unsettled (neither acked nor
    nacked); at the bound it hands out no more until one is settled (default 1000;
    ``unlimited`` in a URL: no bound). A group member (shared by the subscriptions of
    one bus to a group) pauses fetching while it holds this many per subscription,
    fetched and not acked, so the buffer never drops."""
    stall_warning: Seconds | None = STALL_WARNING
    """Seconds a subscription may hold a reader at ``max_unsettled`` before it logs one
    warning saying why (default 30; ``unlimited``: never)."""
    session_timeout_ms: int = 10_000
    """Group session timeout: a member silent this long is removed and its partitions
    move (this is how long a crashed consumer's messages wait)."""
    heartbeat_interval_ms: int = 3_000
    """Heartbeat interval of group members (well below ``session_timeout_ms``)."""
    rebalance_timeout_ms: int = 10_000
    """How long the broker waits for members to rejoin during a rebalance."""
    max_poll_interval_ms: int = 300_000
    """A member that fetches nothing for this long (all its messages held unacked)
    leaves the group; its unacked messages go to the others."""
    fetch_max_wait_ms: int = 100
    """Longest the broker holds an empty fetch (latency of an idle consumer)."""
    request_timeout_ms: int = 15_000
    """Timeout of one request to the broker."""
    commit_interval: Seconds = 0.0
    """Least seconds between offset commits of a member (0: commit as soon as the
    previous commit returned; commits also happen on revoke and close)."""
    reconnect_min_delay: Seconds = 0.05
    """First retry delay after a failed fetch, commit or publish, in seconds (also
    aiokafka's ``retry_backoff_ms``)."""
    reconnect_max_delay: Seconds = 2.0
    """Cap of the doubling retry delay (with jitter), in seconds."""
    close_timeout: Seconds = 10.0
    """Seconds ``close`` waits for the final commit and for the clients to stop."""

    def __post_init__(self) -> None:
        check_unsettled("kafka://", self.max_unsettled, self.stall_warning)
        if not self.bootstrap_servers:
            raise ConfigurationError("kafka:// needs host:port")
        if not self.key:
            raise ConfigurationError("kafka:// key must not be empty")
        positive = (
            "partitions",
            "replication_factor",
            "max_batch_size",
            "max_request_size",
            "producers",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "rebalance_timeout_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "publish_timeout",
            "reconnect_min_delay",
            "reconnect_max_delay",
            "close_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"kafka:// {name} must be positive")
        if self.linger_ms < 0 or self.fetch_max_wait_ms < 0 or self.commit_interval < 0:
            raise ConfigurationError("kafka:// linger_ms, fetch_max_wait_ms, commit_interval >= 0")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigurationError("kafka:// heartbeat_interval_ms must be < session_timeout_ms")

    @classmethod
    def from_url(cls, url: str) -> KafkaConfig:
        """Parse ``kafka://host:port[,host:port]?option=value&...``."""
        parts = urlsplit(url)
        if parts.scheme != "kafka":
            raise ConfigurationError("kafka:// URL expected")
        if parts.username or parts.password:
            raise ConfigurationError("kafka:// credentials (SASL) are not supported yet")
        netloc = unquote(parts.netloc)
        base = cls(bootstrap_servers=netloc) if netloc else cls()
        options, _ = split_query(parts.query)
        return apply_options(base, options, scheme="kafka://", fixed=("bootstrap_servers",))
