"""The store against a PostgreSQL server that goes away and comes back (own cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from eventmill.events import Event
from eventmill.store import open_store
from eventmill.store.errors import StoreUnavailableError
from tests.conftest import REQUIRE_SERVICES
from tests.pubsub._postgres_server import PostgresServer, available

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    if not available():
        if REQUIRE_SERVICES:
            pytest.fail("PostgreSQL binaries are missing and EVENTMILL_REQUIRE_SERVICES=1")
        pytest.skip("PostgreSQL 15 binaries not found")
    srv = PostgresServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


async def test_outage_raises_unavailable_then_the_store_recovers(server: PostgresServer) -> None:
    async with await open_store(server.url) as store:
        first, _ = await store.events.insert(Event(event_name="before.outage"), "k1")
        await asyncio.to_thread(server.stop)
        with pytest.raises(StoreUnavailableError):
            await store.events.insert(Event(event_name="during.outage"), "k2")
        with pytest.raises(StoreUnavailableError):
            await store.events.query()
        with pytest.raises(StoreUnavailableError):
            await store.api_keys.verify("em_0123456789ab_" + "x" * 43)
        await asyncio.to_thread(server.start)
        second, created = await store.events.insert(Event(event_name="after.outage"), "k2")
        assert created
        page = await store.events.query()
        assert [s.id for s in page.events] == [first.id, second.id]
