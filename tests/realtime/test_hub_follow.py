"""How the hub follows the store, on SQLite and PostgreSQL: with no connection it moves
its position without reading the events (nobody to push them to), and a connection
that registers while it does so still gets every event after the position it went
live at."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from eventmill import open_pubsub
from eventmill.events import Event
from eventmill.pubsub.base import PubSub
from eventmill.realtime import Feed, Hub
from eventmill.realtime.config import RealtimeSettings
from eventmill.realtime.connection import Connection
from eventmill.realtime.feed import FeedEvent
from eventmill.store import Store
from eventmill.web.seam import POSITION_KEY


class CountingFeed(Feed):
    """The store's feed, counting the event reads; ``on_head`` runs inside a read of
    the newest position, after the query (the moment a connection could register)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.event_reads = 0
        self.on_head: Callable[[], None] | None = None

    async def after(self, position: int, limit: int) -> list[FeedEvent]:
        self.event_reads += 1
        return await super().after(position, limit)

    async def head(self) -> int:
        newest = await super().head()
        hook, self.on_head = self.on_head, None
        if hook is not None:
            hook()
        return newest


@pytest.fixture
async def bus() -> AsyncIterator[PubSub]:
    bus = await open_pubsub("memory://")
    try:
        yield bus
    finally:
        await bus.close()


async def _store_and_announce(store: Store, bus: PubSub, user: str, n: int) -> list[int]:
    """Store ``n`` events of ``user`` and publish them as ingest does (with positions)."""
    positions = []
    for i in range(n):
        stored, _ = await store.events.insert(
            Event(event_name="test.hub", user_id=user, payload={"n": i})
        )
        msg = stored.event.to_message()
        msg.metadata[POSITION_KEY] = str(stored.position)
        await bus.publish("events", msg)
        positions.append(stored.position)
    return positions


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)


def _connection(user: str) -> Connection:
    return Connection(
        "ws", user_id=user, all_users=False, patterns=None, max_messages=1000, max_bytes=1 << 20
    )


def _queued_positions(conn: Connection) -> list[int]:
    """Positions of the event frames queued for ``conn`` (heartbeats aside)."""
    frames = [orjson.loads(f) for f in conn.queue or ()]
    return [f["position"] for f in frames if f["type"] == "event"]


async def test_with_no_connection_the_hub_moves_on_without_reading_events(
    store: Store, bus: PubSub
) -> None:
    feed = CountingFeed(store)
    hub = Hub(feed, RealtimeSettings(), CollectorRegistry())
    async with hub.running(bus, "events"):
        positions = await _store_and_announce(store, bus, "u_nobody", 5)
        await _until(lambda: hub.head == positions[-1])
    assert feed.event_reads == 0


async def test_a_connection_registering_while_the_hub_moves_on_gets_the_events(
    store: Store, bus: PubSub
) -> None:
    feed = CountingFeed(store)
    hub = Hub(feed, RealtimeSettings(), CollectorRegistry())
    conn = _connection("u_late")

    def join() -> None:  # registers and goes live at the hub's position before the move
        hub.register(conn)
        hub.go_live(conn)

    async with hub.running(bus, "events"):
        start = hub.head
        feed.on_head = join
        positions = await _store_and_announce(store, bus, "u_late", 3)
        await _until(lambda: len(_queued_positions(conn)) >= len(positions))
        assert conn.cursor == start
        assert hub.head == positions[-1]
        assert _queued_positions(conn) == positions
        assert feed.event_reads >= 1
        hub.unregister(conn)


async def test_a_long_burst_lets_the_event_loop_run_between_two_batches(
    store: Store, bus: PubSub
) -> None:
    """On a SQLite file the hub's reads do not yield to the event loop; a burst of many
    batches still lets other tasks run between two of them."""
    feed = CountingFeed(store)
    hub = Hub(feed, RealtimeSettings(read_batch=2), CollectorRegistry())
    conn = _connection("u_burst")
    hub.register(conn)
    turns: list[int] = []  # the batch reads made by the time another task ran

    async def other_task() -> None:
        while True:
            turns.append(feed.event_reads)
            await asyncio.sleep(0)

    async with hub.running(bus, "events"):
        hub.go_live(conn)
        for _ in range(10):  # stored without a wake-up, then found in one catch-up
            await store.events.insert(Event(event_name="test.hub", user_id="u_burst"))
        ticker = asyncio.create_task(other_task())
        try:
            reads = feed.event_reads
            hub.wake()
            await _until(lambda: len(_queued_positions(conn)) == 10)
        finally:
            ticker.cancel()
        hub.unregister(conn)
    during = {t for t in turns if reads < t < feed.event_reads}
    assert len(during) >= 4  # the task ran between batches, not only before and after
