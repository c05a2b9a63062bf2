"""Layer 5, ingestion: webhook receivers, the publish/query API, the durable ingest
path, the outbox relay and the audit handler.

``router`` holds every HTTP route of this package; the app includes it.
"""

from fastapi import APIRouter

from eventmill.ingest import api, webhooks
from eventmill.ingest.audit import audit_handler
from eventmill.ingest.config import SourceConfig, receiver_for, scheme_for
from eventmill.ingest.context import IngestConfig, IngestContext, Receiver
from eventmill.ingest.pipeline import (
    STORED_MARK,
    Accepted,
    PublishMarker,
    ingest,
    publish_stored,
)
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

router = APIRouter()
# The sub-routers' routes themselves (each already carries its router's prefix and
# tags), not the sub-routers: one level less of router nesting on every request.
for _sub in (webhooks.router, api.router):
    router.routes.extend(_sub.routes)

__all__ = [
    "STORED_MARK",
    "Accepted",
    "GitHubScheme",
    "HmacScheme",
    "IngestConfig",
    "IngestContext",
    "OutboxRelay",
    "PublishMarker",
    "RazorpayScheme",
    "Receiver",
    "SignatureScheme",
    "SourceConfig",
    "StandardWebhooksScheme",
    "StripeScheme",
    "Verified",
    "audit_handler",
    "ingest",
    "publish_stored",
    "receiver_for",
    "router",
    "scheme_for",
]
