"""The store reads realtime makes, on SQLite and PostgreSQL: each event's JSON is exactly
:meth:`Event.to_json`, reads are in position order, bounded, filtered by user and name."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from eventmill.events import Event, EventMetadata
from eventmill.realtime import Feed, FeedEvent
from eventmill.store import Store, open_store


def _event(user: str | None, name: str, **payload: object) -> Event:
    return Event(
        event_name=name,
        source="tests",
        user_id=user,
        payload=payload,
        metadata=EventMetadata(correlation_id="corr_1", trace_id="trace_1", headers={"a": "b"}),
        created_at=datetime(2024, 1, 20, 10, 30, 0, 123456, tzinfo=UTC),
    )


async def test_event_json_is_the_events_own(store: Store) -> None:
    events = [
        _event(
            "u1",
            "test.a",
            amount=50000,
            text='₹ naïve "quoted"\nline',
            nested={"x": [1, 2.5, None]},
        ),
        _event(None, "test.b"),
        Event(event_name="test.c", source="tests", processed_at=datetime(2024, 2, 1, tzinfo=UTC)),
    ]
    stored = [(await store.events.insert(e))[0] for e in events]
    feed = Feed(store)
    read = await feed.after(0, 10)
    assert [r.position for r in read] == [s.position for s in stored]
    for got, event in zip(read, events, strict=True):
        assert orjson.loads(got.json) == orjson.loads(event.to_json())
        assert "\n" not in got.json
        assert got.id == event.id
        assert got.event_name == event.event_name
        assert got.user_id == event.user_id
        ws = orjson.loads(got.ws_frame())
        assert ws == {
            "type": "event",
            "position": got.position,
            "payload": orjson.loads(event.to_json()),
        }
        lines = got.sse_frame().decode().split("\n")
        assert lines[:2] == [f"id: {got.position}", f"event: {event.event_name}"]
        assert orjson.loads(lines[2].removeprefix("data: ")) == orjson.loads(event.to_json())
        assert lines[3:] == ["", ""]


async def test_reads_are_bounded_ordered_and_filtered(store: Store) -> None:
    feed = Feed(store)
    assert await feed.head() == 0
    assert await feed.oldest() is None
    names = ["shop.order.created", "shop.order.paid", "user.updated", "shop_x.other"]
    positions: dict[tuple[str | None, str], list[int]] = {}
    for i in range(12):
        user = ["u1", "u2", None][i % 3]
        name = names[i % 4]
        stored, _ = await store.events.insert(_event(user, name, i=i))
        positions.setdefault((user, name), []).append(stored.position)
    head = await feed.head()
    first = await feed.after(0, 5)
    assert await feed.oldest() == first[0].position
    rest = await feed.after(first[-1].position, 100)
    assert len(first) == 5
    assert [e.position for e in first + rest] == sorted(p for ps in positions.values() for p in ps)
    assert rest[-1].position == head

    u1 = await feed.for_client(0, head, user_id="u1", patterns=None, limit=100)
    assert {e.user_id for e in u1} == {"u1"}
    assert len(u1) == 4
    orders = await feed.for_client(0, head, user_id=None, patterns=["shop.order.*"], limit=100)
    assert {e.event_name for e in orders} == {"shop.order.created", "shop.order.paid"}
    # '_' and '.' are literal in patterns (not LIKE / GLOB wildcards)
    exact = await feed.for_client(0, head, user_id=None, patterns=["shop_x.other"], limit=100)
    assert {e.event_name for e in exact} == {"shop_x.other"}
    none = await feed.for_client(0, head, user_id=None, patterns=["shop.x*"], limit=100)
    assert none == []
    upto = await feed.for_client(0, first[2].position, user_id=None, patterns=None, limit=100)
    assert [e.position for e in upto] == [e.position for e in first[:3]]

    assert await feed.count_for_client(0, user_id="u2", patterns=None, cap=100) == 4
    assert await feed.count_for_client(0, user_id=None, patterns=None, cap=5) == 6  # cap + 1
    later = await feed.count_for_client(first[-1].position, user_id=None, patterns=None, cap=100)
    assert later == len(rest)


async def test_the_hubs_reads_and_a_clients_reads_give_the_same_events(store: Store) -> None:
    """On SQLite the hub reads on the event loop's own connection, a client's replay
    through the pool: both give the same events, in the same JSON."""
    for i in range(7):
        await store.events.insert(_event(f"u{i % 2}", "test.same", i=i))
    # times without a fraction, in another zone, and set by the caller
    india = timezone(timedelta(hours=5, minutes=30))
    await store.events.insert(
        Event(
            event_name="test.same",
            source="tests",
            created_at=datetime(2024, 3, 1, 12, 0, 0, tzinfo=india),
            processed_at=datetime(2024, 3, 1, 12, 0, 1, 5, tzinfo=UTC),
        )
    )
    feed = Feed(store)
    try:
        head = await feed.head()
        hub = await feed.after(0, 100)
        client = await feed.for_client(0, head, user_id=None, patterns=None, limit=100)
        assert [(e.position, e.id, e.user_id, e.json) for e in hub] == [
            (e.position, e.id, e.user_id, e.json) for e in client
        ]
        assert hub[-1].position == head
        assert await feed.oldest() == hub[0].position
    finally:
        feed.close()


@pytest.mark.parametrize("problem", ["busy", "broken"])
async def test_a_read_the_event_loop_cannot_make_goes_through_the_pool(
    tmp_path: Path, problem: str
) -> None:
    """When SQLite reports the file busy to the event loop's connection (it never waits
    for a lock), or that connection fails, the hub's read goes through the pool instead
    (which waits for the file); a failed connection is opened again for the next read."""
    store = await open_store(f"sqlite:///{tmp_path / 'events.db'}")
    stored, _ = await store.events.insert(_event("u1", "test.busy"))
    feed = Feed(store)
    try:
        assert [e.id for e in await feed.after(0, 10)] == [stored.id]
        inline = feed._inline
        assert inline is not None
        assert inline.conn is not None
        real = inline.conn
        failures = 0

        class Failing:
            """The driver's answer to the next statement."""

            def execute(self, *args: object) -> None:
                nonlocal failures
                failures += 1
                error = sqlite3.OperationalError(
                    "database is locked" if problem == "busy" else "disk I/O error"
                )
                error.sqlite_errorcode = (
                    sqlite3.SQLITE_BUSY if problem == "busy" else sqlite3.SQLITE_IOERR
                )
                raise error

            def close(self) -> None:
                real.close()

        inline.conn = Failing()  # type: ignore[assignment]
        assert [e.id for e in await feed.after(0, 10)] == [stored.id]
        assert failures == 1
        if problem == "busy":  # kept for the next read
            assert isinstance(inline.conn, Failing)
            inline.conn = real
        else:  # closed, opened again for the next read
            assert inline.conn is None
        assert [e.id for e in await feed.after(0, 10)] == [stored.id]
        assert inline.conn is not None
        assert failures == 1
    finally:
        feed.close()
        await store.close()


def test_a_feed_event_needs_its_json_or_its_row() -> None:
    with pytest.raises(ValueError, match="JSON text or its stored row"):
        FeedEvent(1, "evt_1", "test.a", None)
    built = FeedEvent(1, "evt_1", "test.a", None, '{"id":"evt_1"}')
    assert built.ws_frame() == '{"type":"event","position":1,"payload":{"id":"evt_1"}}'
