"""The :class:`Store`: one database with the event store and the API key store on it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from eventmill.store.api_keys import ApiKeyStore
from eventmill.store.config import StoreConfig
from eventmill.store.database import Database
from eventmill.store.events import EventStore
from eventmill.store.journal import Journal

__all__ = ["Store", "open_store"]


class Store(Database):
    """An open store: :attr:`events`, :attr:`api_keys`, the :attr:`journal`, and the
    engine for features' own tables (see :class:`~eventmill.store.database.Database`)."""

    def __init__(self, config: StoreConfig, engine: AsyncEngine) -> None:
        super().__init__(config, engine)
        self.events = EventStore(self)
        """The event store."""
        self.api_keys = ApiKeyStore(self)
        """The API key store."""
        self.journal = Journal(self)
        """Event hops and rejected webhooks (written while its ``run()`` task runs)."""


async def open_store(url: str | StoreConfig) -> Store:
    """Open the store at ``url`` (see :class:`StoreConfig`) and run pending migrations."""
    return await Store.open(url)
