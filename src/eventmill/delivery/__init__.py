"""Layer 5, outbound webhooks: per-user endpoints, payload builders, the fan-out from
topic ``events``, the dispatcher (Standard Webhooks signatures, a durable retry
schedule, dead letters on ``deliveries.dead``), recovery, and the SSRF guard.

The composition root lists :class:`Delivery` (routes, settings section, lifespan).
"""

from eventmill.delivery.builders import (
    Builder,
    BuilderError,
    PayloadBuilders,
    payload_builder,
    registered_builders,
)
from eventmill.delivery.config import DEFAULT_RETRY_SCHEDULE, DeliverySettings
from eventmill.delivery.dispatcher import DEAD_LETTER_TOPIC, Dispatcher
from eventmill.delivery.feature import FANOUT_GROUP, Delivery
from eventmill.delivery.network import AddressPolicy, DestinationRefusedError
from eventmill.delivery.signing import sign
from eventmill.delivery.store import DeliveryRecord, DeliveryStore, EndpointRecord

__all__ = [
    "DEAD_LETTER_TOPIC",
    "DEFAULT_RETRY_SCHEDULE",
    "FANOUT_GROUP",
    "AddressPolicy",
    "Builder",
    "BuilderError",
    "Delivery",
    "DeliveryRecord",
    "DeliverySettings",
    "DeliveryStore",
    "DestinationRefusedError",
    "Dispatcher",
    "EndpointRecord",
    "PayloadBuilders",
    "payload_builder",
    "registered_builders",
    "sign",
]
