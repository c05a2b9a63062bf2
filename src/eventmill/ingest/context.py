"""What the ingest routes and workers share: configuration, the shared resources, and the
group-commit inserter and publish marker while the feature runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from eventmill.events import EventRegistry, Transformer
from eventmill.ingest._group_commit import GroupCommitInserter
from eventmill.ingest._marker import PublishMarker
from eventmill.ingest.metrics import IngestMetrics
from eventmill.ingest.signatures import SignatureScheme
from eventmill.pubsub.base import PubSub
from eventmill.store import ApiKeyStore, EventStore
from eventmill.web.metrics import BusMetrics
from eventmill.web.seam import Resources

__all__ = ["IngestConfig", "IngestContext", "Receiver"]


@dataclass(frozen=True, slots=True)
class Receiver:
    """One webhook source: how its requests are verified and turned into events."""

    scheme: SignatureScheme
    """Verifies the signature and names the dedup key."""
    transformer: Transformer
    """Turns the verified, parsed body into an :class:`~eventmill.events.Event`."""


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The ingest feature's runtime configuration (built from its settings section)."""

    topic: str = "events"
    """Topic every ingested event is published to (default ``events``)."""
    max_body_bytes: int = 1024 * 1024
    """Largest accepted body; larger → 413 (default 1 MiB)."""
    request_timeout: float = 4.0
    """Seconds allowed for storing and then publishing one request, together (default 4)."""
    receivers: dict[str, Receiver] = field(default_factory=dict)
    """Webhook sources by name (``razorpay`` and the configured generic ones); a source
    not in it answers 404 (default none)."""
    registry: EventRegistry = field(default_factory=EventRegistry.default)
    """Event name → payload model; validates every event on the way in."""
    idempotency_ttl: float = 86_400.0
    """Seconds an ``Idempotency-Key`` is remembered from its first use (default 24 h)."""
    crash_after_store: bool = False
    """Fault injection for the crash test: ``os._exit`` after storing, before publishing."""


@dataclass(slots=True)
class IngestContext:
    """The configuration, the shared resources, and the workers while they run."""

    config: IngestConfig
    resources: Resources
    inserter: GroupCommitInserter | None = None
    """Coalesces concurrent inserts into one transaction while the feature runs."""
    marker: PublishMarker | None = None
    """Batches ``mark_published`` across requests while the feature runs (else per request)."""
    metrics: IngestMetrics | None = None
    """Requests by source and outcome (``None``: not counted, e.g. the CLI)."""
    bus_metrics: BusMetrics | None = None
    """Publishes by topic (``None``: not counted)."""

    def require_events(self) -> EventStore:
        """The open event store (→ 503 while it is not open)."""
        return self.resources.require_events()

    def require_keys(self) -> ApiKeyStore:
        """The open API key store (→ 503 while it is not open)."""
        return self.resources.require_keys()

    def require_bus(self) -> PubSub:
        """The open bus (→ 503 while it is not open)."""
        return self.resources.require_bus()
