"""eventmill: event-driven pub/sub for Python.

The library: :class:`Message`, the :class:`Publisher` / :class:`Subscriber`
contract, backends chosen by URL (:func:`open_pubsub`), and a :class:`Router`
with middleware. The service (``eventmill serve``) is built on it.
"""

from eventmill.errors import (
    AuthenticationError,
    BackendUnavailableError,
    BufferFullError,
    CircuitOpenError,
    ClosedError,
    ConfigurationError,
    DuplicateEventError,
    EventmillError,
    EventValidationError,
    HandlerError,
    HandlerTimeoutError,
    InvalidCursorError,
    InvalidNameError,
    MessageStateError,
    PayloadTooLargeError,
    PublishError,
    PubSubError,
    RouterError,
    SignatureError,
    StoreError,
    StoreUnavailableError,
    SubscribeError,
    UnknownEventError,
    UnknownSourceError,
)
from eventmill.message import Message, new_message_id
from eventmill.pubsub.base import Capabilities, Publisher, PubSub, Subscriber, Subscription
from eventmill.pubsub.factory import open_pubsub
from eventmill.pubsub.memory import MemoryConfig, MemoryPubSub
from eventmill.router import Router, RouterConfig

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BackendUnavailableError",
    "BufferFullError",
    "Capabilities",
    "CircuitOpenError",
    "ClosedError",
    "ConfigurationError",
    "DuplicateEventError",
    "EventValidationError",
    "EventmillError",
    "HandlerError",
    "HandlerTimeoutError",
    "InvalidCursorError",
    "InvalidNameError",
    "MemoryConfig",
    "MemoryPubSub",
    "Message",
    "MessageStateError",
    "PayloadTooLargeError",
    "PubSub",
    "PubSubError",
    "PublishError",
    "Publisher",
    "Router",
    "RouterConfig",
    "RouterError",
    "SignatureError",
    "StoreError",
    "StoreUnavailableError",
    "SubscribeError",
    "Subscriber",
    "Subscription",
    "UnknownEventError",
    "UnknownSourceError",
    "__version__",
    "new_message_id",
    "open_pubsub",
]
