"""Fixtures of the realtime tests that read the store in process: ``store_url`` (an
empty SQLite and PostgreSQL store) and ``store`` (open on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from eventmill.store import Store, open_store
from tests.ingest.support import store_url

__all__ = ["store", "store_url"]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = await open_store(store_url)
    try:
        yield store
    finally:
        await store.close()
