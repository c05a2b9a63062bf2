"""Publishers, subscribers and their backends."""

from eventmill.pubsub.base import (
    Capabilities,
    Publisher,
    PubSub,
    Subscriber,
    Subscription,
    TransactionalPublisher,
    supports_transactions,
)
from eventmill.pubsub.factory import open_pubsub
from eventmill.pubsub.memory import MemoryConfig, MemoryPubSub

__all__ = [
    "Capabilities",
    "MemoryConfig",
    "MemoryPubSub",
    "PubSub",
    "Publisher",
    "Subscriber",
    "Subscription",
    "TransactionalPublisher",
    "open_pubsub",
    "supports_transactions",
]
