"""What the ingest routes and background tasks share: configuration and open resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventmill.errors import BackendUnavailableError
from eventmill.events import EventRegistry, Transformer
from eventmill.ingest.signatures import SignatureScheme
from eventmill.pubsub.base import PubSub
from eventmill.store.errors import StoreUnavailableError

if TYPE_CHECKING:
    from eventmill.ingest._group_commit import GroupCommitInserter
    from eventmill.ingest.pipeline import PublishMarker
    from eventmill.store import ApiKeyStore, EventStore, Store

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
    """Settings of the ingest layer (built from :class:`eventmill.settings.Settings`)."""

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
    crash_after_store: bool = False
    """Fault injection for the crash test: ``os._exit`` after storing, before publishing."""


@dataclass(slots=True)
class IngestContext:
    """Configuration plus the bus and store once the lifespan has opened them."""

    config: IngestConfig
    bus: PubSub | None = None
    store: Store | None = None
    inserter: GroupCommitInserter | None = None
    """Coalesces concurrent inserts into one transaction once the app runs it."""
    marker: PublishMarker | None = None
    """Batches ``mark_published`` across requests once the app runs it (else per request)."""

    def require_events(self) -> EventStore:
        """The open event store, or :class:`StoreUnavailableError` (→ 503)."""
        if self.store is None:
            raise StoreUnavailableError("the event store is not reachable; retry later")
        return self.store.events

    def require_keys(self) -> ApiKeyStore:
        """The open API key store, or :class:`StoreUnavailableError` (→ 503)."""
        if self.store is None:
            raise StoreUnavailableError("the event store is not reachable; retry later")
        return self.store.api_keys

    def require_bus(self) -> PubSub:
        """The open bus, or :class:`BackendUnavailableError` (→ 503)."""
        if self.bus is None:
            raise BackendUnavailableError("the bus is not reachable; retry later")
        return self.bus
