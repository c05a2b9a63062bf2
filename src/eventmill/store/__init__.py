"""Layer 4: the SQL store (SQLAlchemy 2 async Core + Alembic; SQLite or PostgreSQL).

``store = await open_store(url)`` connects and migrates; ``store.events`` holds the
events (deduplicated inserts, outbox, cursor-paged queries) and ``store.api_keys``
the hashed API keys.
"""

from eventmill.store.api_keys import SCOPES, ApiKeyRecord, ApiKeyStore
from eventmill.store.config import StoreConfig
from eventmill.store.database import Database
from eventmill.store.errors import (
    DuplicateEventError,
    InvalidCursorError,
    InvalidValueError,
    StoreError,
    StoreUnavailableError,
)
from eventmill.store.events import EventPage, EventStore, StoredEvent
from eventmill.store.store import Store, open_store

__all__ = [
    "SCOPES",
    "ApiKeyRecord",
    "ApiKeyStore",
    "Database",
    "DuplicateEventError",
    "EventPage",
    "EventStore",
    "InvalidCursorError",
    "InvalidValueError",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreUnavailableError",
    "StoredEvent",
    "open_store",
]
