"""Layer 5, ingestion: webhook receivers, the publish/query API, the durable ingest
path, the outbox relay and the audit handler.

The composition root lists :class:`Ingest` (routes, settings section, lifespan).
"""

from eventmill.ingest.audit import audit_handler
from eventmill.ingest.config import IngestSettings, SourceConfig, receiver_for, scheme_for
from eventmill.ingest.context import IngestConfig, IngestContext, Receiver
from eventmill.ingest.feature import Ingest, ingest_config
from eventmill.ingest.pipeline import Accepted, ingest, publish_stored
from eventmill.ingest.relay import OutboxRelay
from eventmill.ingest.signatures import (
    GitHubScheme,
    HmacScheme,
    RazorpayScheme,
    SignatureScheme,
    StandardWebhooksScheme,
    StripeScheme,
    Verified,
)

__all__ = [
    "Accepted",
    "GitHubScheme",
    "HmacScheme",
    "Ingest",
    "IngestConfig",
    "IngestContext",
    "IngestSettings",
    "OutboxRelay",
    "RazorpayScheme",
    "Receiver",
    "SignatureScheme",
    "SourceConfig",
    "StandardWebhooksScheme",
    "StripeScheme",
    "Verified",
    "audit_handler",
    "ingest",
    "ingest_config",
    "publish_stored",
    "receiver_for",
    "scheme_for",
]
