"""Property tests of the store: arbitrary events round-trip; cursor paging sees every
event exactly once while writers insert concurrently."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventmill.events import Event
from eventmill.store import Store, open_store
from tests.events.strategies import events

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def migrated_url(store_url: str) -> str:
    """``store_url`` with the schema already created (so examples only reopen it)."""

    async def migrate() -> None:
        await (await open_store(store_url)).close()

    asyncio.run(migrate())
    return store_url


def run(url: str, body: object) -> None:
    async def main() -> None:
        async with await open_store(url) as store:
            await body(store)  # type: ignore[operator]

    asyncio.run(main())


@SETTINGS
@given(batch=st.lists(events, min_size=1, max_size=5))
def test_any_event_round_trips_through_the_store(migrated_url: str, batch: list[Event]) -> None:
    async def body(store: Store) -> None:
        for event in batch:
            key = uuid.uuid4().hex
            _, created = await store.events.insert(event, key)
            assert created
            got = await store.events.get(event.id)
            assert got is not None
            assert got.event == event
            assert got.event.to_json() == event.to_json()

    run(migrated_url, body)


@SETTINGS
@given(
    writers=st.integers(min_value=1, max_value=4),
    per_writer=st.integers(min_value=1, max_value=15),
    page_size=st.integers(min_value=1, max_value=7),
)
def test_paging_during_concurrent_inserts_sees_each_event_once(
    migrated_url: str, writers: int, per_writer: int, page_size: int
) -> None:
    tag = uuid.uuid4().hex[:12]  # one run's events, apart from earlier examples'

    async def body(store: Store) -> None:
        inserted: list[str] = []
        done = asyncio.Event()

        async def writer(w: int) -> None:
            for i in range(per_writer):
                event = Event(event_name="prop.insert", user_id=tag)
                await store.events.insert(event, f"{tag}-{w}-{i}")
                inserted.append(event.id)
                await asyncio.sleep(0)

        async def writers_then_done() -> None:
            await asyncio.gather(*(writer(w) for w in range(writers)))
            done.set()

        seen: list[str] = []
        positions: list[int] = []
        cursor = None

        async def read_page() -> bool:
            nonlocal cursor
            page = await store.events.query(user_id=tag, after=cursor, limit=page_size)
            seen.extend(s.id for s in page.events)
            positions.extend(s.position for s in page.events)
            cursor = page.next_cursor
            return page.has_more

        task = asyncio.create_task(writers_then_done())
        while not done.is_set():
            await read_page()
            await asyncio.sleep(0)
        await task
        while await read_page():
            pass
        assert len(seen) == len(set(seen)), "an event was returned twice"
        assert sorted(seen) == sorted(inserted), "an event was skipped"
        assert positions == sorted(positions)

    run(migrated_url, body)
