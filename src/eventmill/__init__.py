"""eventmill: event-driven pub/sub for Python.

The library: :class:`Message`, the :class:`Publisher` / :class:`Subscriber`
contract, backends chosen by URL (:func:`open_pubsub`), and a :class:`Router`
with middleware. The service (``eventmill serve``) is built on it.
"""

from eventmill.errors import (
    BackendUnavailableError,
    BufferFullError,
    CircuitOpenError,
    ClosedError,
    ConfigurationError,
    EventmillError,
    EventValidationError,
    HandlerError,
    HandlerTimeoutError,
    InvalidNameError,
    PublishError,
    PubSubError,
    RouterError,
    SubscribeError,
    UnknownEventError,
)
from eventmill.message import Message, new_message_id
from eventmill.pubsub.base import Capabilities, Publisher, PubSub, Subscriber, Subscription
from eventmill.pubsub.factory import open_pubsub
from eventmill.pubsub.memory import MemoryConfig, MemoryPubSub
from eventmill.router import Router, RouterConfig

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BufferFullError",
    "Capabilities",
    "CircuitOpenError",
    "ClosedError",
    "ConfigurationError",
    "EventValidationError",
    "EventmillError",
    "HandlerError",
    "HandlerTimeoutError",
    "InvalidNameError",
    "MemoryConfig",
    "MemoryPubSub",
    "Message",
    "PubSub",
    "PubSubError",
    "PublishError",
    "Publisher",
    "Router",
    "RouterConfig",
    "RouterError",
    "SubscribeError",
    "Subscriber",
    "Subscription",
    "UnknownEventError",
    "__version__",
    "new_message_id",
    "open_pubsub",
]
