"""eventmill: event-driven pub/sub for Python.

The library: :class:`Message`, the :class:`Publisher` / :class:`Subscriber`
contract, backends chosen by URL (:func:`open_pubsub`), and a :class:`Router`
with middleware. The service (``eventmill serve``) is built on it.
"""

from typing import TYPE_CHECKING, Any

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
from eventmill.router import Router, RouterConfig

__version__ = "0.1.0"

if TYPE_CHECKING:
    from eventmill.client import (
        AsyncClient,
        Client,
        ClientConnectionError,
        ClientError,
        RetryPolicy,
    )

_CLIENT = frozenset(
    {"AsyncClient", "Client", "ClientConnectionError", "ClientError", "RetryPolicy"}
)


def __getattr__(name: str) -> Any:
    """The HTTP client (``eventmill.Client``, …) is imported on first use: it pulls in
    httpx and pydantic, which a user of the library alone does not need."""
    if name in _CLIENT:
        from eventmill import client

        return getattr(client, name)
    raise AttributeError(f"module 'eventmill' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "BackendUnavailableError",
    "BufferFullError",
    "Capabilities",
    "CircuitOpenError",
    "Client",
    "ClientConnectionError",
    "ClientError",
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
    "RetryPolicy",
    "Router",
    "RouterConfig",
    "RouterError",
    "SubscribeError",
    "Subscriber",
    "Subscription",
    "TransactionalPublisher",
    "UnknownEventError",
    "__version__",
    "new_message_id",
    "open_pubsub",
    "supports_transactions",
]
