"""EventStore against SQLite and PostgreSQL: dedup, outbox, get, query, cursors."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventmill.errors import EventValidationError
from eventmill.events import Event, EventMetadata
from eventmill.store import Store, StoredEvent
from eventmill.store.errors import (
    DuplicateEventError,
    InvalidCursorError,
    InvalidValueError,
    StoreError,
)
from eventmill.store.events import LIMITS, check_external_id, encode_cursor


def make_event(name: str = "user.created", **kwargs: object) -> Event:
    return Event(event_name=name, **kwargs)  # type: ignore[arg-type]


async def test_insert_then_get_returns_the_same_event(store: Store) -> None:
    event = Event(
        event_name="razorpay.payment.captured",
        source="razorpay",
        user_id="user_123",
        payload={"z": 1, "a": [1, 2.5, "x", None, {"k": True}], "unicode": "₹ 500"},
        metadata=EventMetadata(correlation_id="c1", trace_id="t1", headers={"h": "v"}),
        created_at=datetime(2024, 1, 20, 10, 30, 0, 123456, tzinfo=UTC),
        processed_at=datetime(2024, 1, 20, 10, 30, 1, tzinfo=UTC),
    )
    stored, created = await store.events.insert(event, "evt_rzp_1")
    assert created
    assert stored.event == event
    assert stored.external_id == "evt_rzp_1"
    assert stored.published_at is None
    got = await store.events.get(event.id)
    assert got is not None
    assert got.event == event
    assert list(got.event.payload) == ["z", "a", "unicode"]  # key order kept
    assert got.position == stored.position
    assert got.external_id == "evt_rzp_1"
    assert got.stored_at == stored.stored_at
    assert await store.events.get("evt_missing") is None


async def test_duplicate_external_id_returns_the_first_event(store: Store) -> None:
    first, created1 = await store.events.insert(make_event(source="razorpay"), "ext-1")
    second, created2 = await store.events.insert(make_event(source="razorpay"), "ext-1")
    assert created1
    assert not created2
    assert second.id == first.id
    assert second.position == first.position
    # the same external id from another source is another event
    other, created3 = await store.events.insert(make_event(source="github"), "ext-1")
    assert created3
    assert other.id != first.id


async def test_ten_concurrent_inserts_of_one_key_create_exactly_one(store: Store) -> None:
    events = [make_event("razorpay.payment.captured", source="razorpay") for _ in range(10)]
    results = await asyncio.gather(*(store.events.insert(e, "same-key") for e in events))
    created = [stored for stored, was_created in results if was_created]
    assert len(created) == 1
    assert {stored.id for stored, _ in results} == {created[0].id}
    page = await store.events.query(source="razorpay")
    assert [s.id for s in page.events] == [created[0].id]


async def test_insert_without_external_id_dedups_by_event_id(store: Store) -> None:
    event = make_event()
    _, created1 = await store.events.insert(event)
    again, created2 = await store.events.insert(event)
    assert created1
    assert not created2
    assert again.event == event


async def test_event_id_taken_by_another_key_raises(store: Store) -> None:
    event = make_event(source="razorpay")
    await store.events.insert(event, "key-a")
    with pytest.raises(DuplicateEventError):
        await store.events.insert(event, "key-b")


async def test_insert_if_absent_by_id_is_idempotent_and_published(store: Store) -> None:
    event = make_event("payment.processed")
    results = await asyncio.gather(*(store.events.insert_if_absent_by_id(event) for _ in range(5)))
    assert sum(created for _, created in results) == 1
    stored = await store.events.get(event.id)
    assert stored is not None
    assert stored.published_at is not None
    assert await store.events.unpublished() == []


async def test_audit_insert_of_an_ingested_event_keeps_the_ingested_row(store: Store) -> None:
    event = make_event("razorpay.order.paid", source="razorpay")
    ingested, _ = await store.events.insert(event, "rzp-evt-9")
    audited, created = await store.events.insert_if_absent_by_id(event)
    assert not created
    assert audited.external_id == "rzp-evt-9"
    assert audited.position == ingested.position


async def test_outbox_lists_unpublished_oldest_first_until_marked(store: Store) -> None:
    a, _ = await store.events.insert(make_event("a.one"), "1")
    b, _ = await store.events.insert(make_event("a.two"), "2")
    c, _ = await store.events.insert(make_event("a.three"), "3", published=True)
    pending = await store.events.unpublished(limit=10)
    assert [s.id for s in pending] == [a.id, b.id]
    assert [s.id for s in await store.events.unpublished(limit=1)] == [a.id]
    # nothing is older than an hour yet
    assert await store.events.unpublished(older_than=3600) == []
    assert await store.events.unpublished(older_than=timedelta(hours=1)) == []
    assert await store.events.mark_published([a.id, c.id, "evt_unknown"]) == 1
    assert [s.id for s in await store.events.unpublished()] == [b.id]
    assert await store.events.mark_published([b.id]) == 1
    assert await store.events.mark_published([b.id]) == 0
    assert await store.events.unpublished() == []
    got = await store.events.get(a.id)
    assert got is not None
    assert got.published_at is not None
    assert await store.events.mark_published([]) == 0


async def test_mark_published_handles_more_ids_than_one_chunk(store: Store) -> None:
    ids = []
    for i in range(3):
        stored, _ = await store.events.insert(make_event(), f"k{i}")
        ids.append(stored.id)
    many = ids + [f"evt_none_{i}" for i in range(1200)]
    assert await store.events.mark_published(many) == 3


async def _seed(store: Store) -> list[StoredEvent]:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    specs = [
        ("razorpay.payment.captured", "razorpay", "u1"),
        ("razorpay.payment.failed", "razorpay", "u2"),
        ("razorpay.order.paid", "razorpay", "u1"),
        ("user.created", "internal", "u1"),
        ("payment.processed", "internal", None),
        ("razorpay_payment_x", "internal", "u1"),  # '_' must not act as a LIKE wildcard
        ("RAZORPAY.PAYMENT.CAPTURED", "internal", "u1"),  # matching is case-sensitive
    ]
    out = []
    for i, (name, source, user) in enumerate(specs):
        event = Event(
            event_name=name, source=source, user_id=user, created_at=base + timedelta(hours=i)
        )
        stored, _ = await store.events.insert(event, f"seed-{i}")
        out.append(stored)
    return out


async def test_query_filters(store: Store) -> None:
    seeded = await _seed(store)
    ids = [s.id for s in seeded]

    async def names(**filters: object) -> list[str]:
        page = await store.events.query(**filters)  # type: ignore[arg-type]
        return [s.id for s in page.events]

    assert await names() == ids
    assert await names(user_id="u1") == [ids[0], ids[2], ids[3], ids[5], ids[6]]
    assert await names(source="internal") == ids[3:]
    assert await names(event_name="razorpay.payment.*") == ids[0:2]
    assert await names(event_name="razorpay.*") == ids[0:3]
    assert await names(event_name="*.paid") == [ids[2]]
    assert await names(event_name="razorpay_payment*") == [ids[5]]
    assert await names(event_name="razorpay.payment.captured") == [ids[0]]
    assert await names(event_name="*") == ids
    assert await names(event_name="razorpay.*", user_id="u1") == [ids[0], ids[2]]
    base = datetime(2025, 1, 1, tzinfo=UTC)
    assert await names(since=base + timedelta(hours=2)) == ids[2:]
    assert await names(until=base + timedelta(hours=2)) == ids[:2]
    naive = datetime(2025, 1, 1, 1, 0)  # naive = UTC
    assert await names(since=naive, until=naive + timedelta(hours=1)) == [ids[1]]
    assert await names(order="desc") == ids[::-1]
    assert await names(user_id="nobody") == []


async def test_query_pages_with_cursors_in_both_orders(store: Store) -> None:
    seeded = await _seed(store)
    ids = [s.id for s in seeded]
    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.events.query(after=cursor, limit=3, order=order)  # type: ignore[arg-type]
            seen += [s.id for s in page.events]
            if not page.has_more:
                break
            cursor = page.next_cursor
        assert seen == expected
        # tailing: the last cursor yields nothing now, and the cursor stays put
        empty = await store.events.query(after=page.next_cursor, order=order)  # type: ignore[arg-type]
        assert empty.events == []
        assert empty.next_cursor == page.next_cursor
        assert not empty.has_more


async def test_cursor_of_a_stored_event_resumes_after_it(store: Store) -> None:
    seeded = await _seed(store)
    page = await store.events.query(after=seeded[2].cursor)
    assert [s.id for s in page.events] == [s.id for s in seeded[3:]]
    assert store.events.position_of(seeded[2].cursor) == seeded[2].position
    assert store.events.cursor_for(seeded[2].position) == seeded[2].cursor
    later, _ = await store.events.insert(make_event(), "later")
    tail = await store.events.query(after=page.next_cursor)
    assert [s.id for s in tail.events] == [later.id]


async def test_positions_increase_with_insertion_order(store: Store) -> None:
    stored = [(await store.events.insert(make_event(), f"p{i}"))[0] for i in range(5)]
    positions = [s.position for s in stored]
    assert positions == sorted(positions)
    assert len(set(positions)) == 5


def _raw_cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "garbage!",
        "djE6YTp4",
        "djI6YTox",
        "djE6eDox",
        "djE6YTotMQ",
        # past a 64-bit position (the database cannot take it), and not what
        # encode_cursor writes: other digits, signs, spaces, underscores
        _raw_cursor("v1:a:9223372036854775808"),
        _raw_cursor("v1:a:99999999999999999999"),
        _raw_cursor("v1:a:\u0663"),
        _raw_cursor("v1:a:+5"),
        _raw_cursor("v1:a: 5"),
        _raw_cursor("v1:a:1_0"),
    ],
)
async def test_malformed_cursors_raise(store: Store, cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        await store.events.query(after=cursor)


async def test_cursor_for_the_other_order_raises(store: Store) -> None:
    with pytest.raises(InvalidCursorError, match="order=desc"):
        await store.events.query(after=store.events.cursor_for(5, "desc"))


@pytest.mark.parametrize("bad", ["razorpay.%", "a b", "x?y", "[ab]", ""])
async def test_invalid_event_name_filter_is_a_validation_error(store: Store, bad: str) -> None:
    with pytest.raises(EventValidationError) as info:
        await store.events.query(event_name=bad)
    assert info.value.field == "event_name"


@pytest.mark.parametrize(
    ("field", "when"),
    [
        ("since", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        ("until", datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))),
    ],
)
async def test_a_time_filter_outside_the_utc_years_is_a_validation_error(
    store: Store, field: str, when: datetime
) -> None:
    """In UTC it is in year 0 or 10000: converting it overflowed (a 500 at the service)."""
    with pytest.raises(EventValidationError, match="outside the years 1-9999 in UTC") as info:
        await store.events.query(**{field: when})  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize("limit", [0, 1001])
async def test_limit_out_of_range_raises(store: Store, limit: int) -> None:
    with pytest.raises(StoreError):
        await store.events.query(limit=limit)


async def test_query_limit_bounds_the_page(store: Store) -> None:
    await _seed(store)
    page = await store.events.query(limit=1)
    assert len(page.events) == 1
    assert page.has_more


async def test_closed_store_raises_store_error(store_url: str) -> None:
    from eventmill.store import open_store

    s = await open_store(store_url)
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await s.events.get("evt_x")


async def test_insert_many_dedups_within_the_batch_and_against_the_store(store: Store) -> None:
    earlier, _ = await store.events.insert(make_event(source="razorpay"), "old")
    taken = make_event(source="razorpay")
    await store.events.insert(taken, "taken-key")
    a, b, c, d = (make_event(source="razorpay") for _ in range(4))
    results = await store.events.insert_many(
        [
            (a, "k1"),
            (b, "k1"),  # same key as a, in the same batch
            (c, "old"),  # key already stored
            (d, None),  # no key: dedup by id
            (d, None),
            (taken, "another-key"),  # id taken by another key
        ]
    )
    assert isinstance(results[5], DuplicateEventError)
    ok = [r for r in results[:5] if not isinstance(r, DuplicateEventError)]
    assert len(ok) == 5
    (ra, ca), (rb, cb), (rc, cc), (rd1, cd1), (rd2, cd2) = ok
    assert (ca, cb, cc, cd1, cd2) == (True, False, False, True, False)
    assert rb.id == ra.id == a.id
    assert rc.id == earlier.id
    assert rd1.id == rd2.id == d.id
    assert ra.position < rd1.position
    got = await store.events.get(a.id)
    assert got is not None
    assert got.position == ra.position
    assert await store.events.insert_many([]) == []


async def _retry_storm(store: Store) -> list[tuple[Event, str]]:
    """Store 20 events, then send them all again as new Event objects (a provider
    retrying) until insert_many reads keys before inserting."""
    keys = [f"storm-{i}" for i in range(20)]
    await store.events.insert_many([(make_event(source="razorpay"), k) for k in keys])
    again = [(make_event(source="razorpay"), k) for k in keys]
    for _ in range(4):
        results = await store.events.insert_many(again)
        assert all(isinstance(r, tuple) and not r[1] for r in results)
    assert store.events._duplicates > 0.5  # the read-first mode (see insert_many)
    return again


async def test_insert_many_during_a_retry_storm_answers_as_usual(store: Store) -> None:
    again = await _retry_storm(store)
    earlier = (await store.events.query(source="razorpay", limit=1)).events[0]
    taken = make_event(source="razorpay")
    await store.events.insert(taken, "taken-key")
    a, b, d = (make_event(source="razorpay") for _ in range(3))
    results = await store.events.insert_many(
        [
            again[0],  # stored: the first event of its key
            (a, "k1"),
            (b, "k1"),  # same key as a, in the same batch
            (d, None),  # no key: dedup by id
            (d, None),
            (taken, "another-key"),  # id taken by another key
        ]
    )
    assert isinstance(results[5], DuplicateEventError)
    ok = [r for r in results[:5] if isinstance(r, tuple)]
    assert [created for _, created in ok] == [False, True, False, True, False]
    assert ok[0][0].id == earlier.id
    assert ok[0][0].event == earlier.event
    assert ok[1][0].id == ok[2][0].id == a.id
    assert ok[3][0].id == ok[4][0].id == d.id
    assert (await store.events.get(a.id)) is not None


async def test_concurrent_insert_many_calls_during_a_retry_storm_create_each_key_once(
    store: Store,
) -> None:
    await _retry_storm(store)
    keys = [f"new-{i}" for i in range(20)]
    calls = [[(make_event(source="razorpay"), k) for k in keys] for _ in range(5)]
    all_results = await asyncio.gather(*(store.events.insert_many(c) for c in calls))
    created = [r for results in all_results for r in results if isinstance(r, tuple) and r[1]]
    assert len(created) == len(keys)
    winners = {r[0].external_id: r[0].id for r in created}
    for results in all_results:
        assert all(isinstance(r, tuple) and winners[r[0].external_id] == r[0].id for r in results)


async def test_the_read_first_mode_ends_with_the_storm(store: Store) -> None:
    await _retry_storm(store)
    for round_ in range(4):
        fresh = [(make_event(source="razorpay"), f"after-{round_}-{i}") for i in range(10)]
        results = await store.events.insert_many(fresh)
        assert all(isinstance(r, tuple) and r[1] for r in results)
    assert store.events._duplicates < 0.5


async def test_insert_many_larger_than_one_chunk(store: Store) -> None:
    batch = [(make_event(user_id="bulk"), f"bulk-{i}") for i in range(1100)]
    results = await store.events.insert_many(batch, published=True)
    assert all(not isinstance(r, Exception) and r[1] for r in results)
    again = await store.events.insert_many(batch)
    assert all(not isinstance(r, Exception) and not r[1] for r in again)
    page = await store.events.query(user_id="bulk", limit=1000)
    assert len(page.events) == 1000
    assert page.has_more
    assert await store.events.unpublished() == []


async def test_concurrent_insert_many_calls_create_each_key_once(store: Store) -> None:
    keys = [f"c{i}" for i in range(20)]
    calls = [[(make_event(source="razorpay"), k) for k in keys] for _ in range(5)]
    all_results = await asyncio.gather(*(store.events.insert_many(c) for c in calls))
    created = [
        r for results in all_results for r in results if not isinstance(r, Exception) and r[1]
    ]
    assert len(created) == len(keys)
    page = await store.events.query(source="razorpay", limit=100)
    assert sorted(s.external_id or "" for s in page.events) == sorted(keys)


# -- values the store cannot hold: the caller's error, the same on both databases ------


def _bad(field: str, value: object) -> tuple[Event, str | None]:
    """An event (and external id) whose ``field`` is ``value``, built without
    validation (model_copy), as a caller's model_construct would."""
    if field == "external_id":
        return make_event(source="razorpay"), value  # type: ignore[return-value]
    return make_event(source="razorpay").model_copy(update={field: value}), None


REFUSED = [
    ("external_id", "k" * 257, "too_long"),
    ("external_id", "", "empty"),
    ("external_id", "a\x00b", "control_character"),
    ("external_id", "line\nbreak", "control_character"),
    ("external_id", "\ud800", "not_text"),
    ("external_id", 42, "not_text"),
    ("id", "e" * 129, "too_long"),
    ("id", "evt\x00", "control_character"),
    ("source", "s" * 65, "too_long"),
    ("event_name", "n" * 201, "too_long"),
    ("user_id", "u" * 257, "too_long"),
    ("user_id", "u\x00", "control_character"),
    ("user_id", "\udcff", "not_text"),
]


@pytest.mark.parametrize(("field", "value", "problem"), REFUSED)
@pytest.mark.parametrize("method", ["insert", "insert_many"])
async def test_a_value_over_its_column_is_the_callers_error_and_stores_nothing(
    store: Store, method: str, field: str, value: object, problem: str
) -> None:
    event, ext = _bad(field, value)
    good = (make_event(source="razorpay"), "good-key")
    if method == "insert":
        call = store.events.insert(event, ext)
    else:
        call = store.events.insert_many([good, (event, ext)])  # type: ignore[assignment]
    with pytest.raises(InvalidValueError) as info:
        await call
    error = info.value
    assert isinstance(error, EventValidationError)  # the service answers 422
    assert isinstance(error, StoreError)
    assert error.field == field
    assert error.problem == problem
    assert error.errors == [{"field": field, "message": str(error), "type": problem}]
    if problem == "too_long":
        assert error.limit == LIMITS[field]
        assert f"1-{LIMITS[field]} characters" in str(error)
    assert str(value) not in str(error) or not value  # the message never holds the value
    assert (await store.events.query()).events == []


@pytest.mark.parametrize(("key", "problem"), [("k" * 257, "too_long"), ("", "empty")])
def test_check_external_id_names_the_field(key: str, problem: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        check_external_id(key)
    assert info.value.field == "external_id"
    assert info.value.problem == problem
    check_external_id("k" * 256)
    check_external_id(None)


async def test_values_at_their_column_sizes_are_stored_on_both_databases(store: Store) -> None:
    event = Event(
        id="e" * 128,
        event_name="n" * 200,
        source="s" * 64,
        user_id="ü" * 256,
        payload={},
    )
    [result] = await store.events.insert_many([(event, "k" * 256)])
    assert isinstance(result, tuple)
    assert result[1]
    got = await store.events.get("e" * 128)
    assert got is not None
    assert got.event == event
    assert got.external_id == "k" * 256
    page = await store.events.query(user_id="ü" * 256, source="s" * 64, event_name="n" * 200)
    assert [s.id for s in page.events] == ["e" * 128]


@pytest.mark.parametrize(
    "payload",
    [
        {"set": {1, 2}},
        {"text": "lone \ud800 surrogate"},
        "deep",  # nested 300 levels, past orjson's limit (254)
    ],
)
@pytest.mark.parametrize("method", ["insert", "insert_many", "insert_many_large"])
async def test_a_payload_json_cannot_hold_is_the_callers_error(
    store: Store, method: str, payload: object
) -> None:
    if payload == "deep":
        deep: object = 1
        for _ in range(300):
            deep = [deep]
        payload = deep
    event = make_event(source="razorpay").model_copy(update={"payload": payload})
    if method == "insert":
        call = store.events.insert(event, "bad-payload")
    elif method == "insert_many":
        call = store.events.insert_many([(make_event(), "ok"), (event, "bad-payload")])  # type: ignore[assignment]
    else:  # more than one chunk: the SQLAlchemy path on SQLite too
        many = [(make_event(), f"ok-{i}") for i in range(600)]
        call = store.events.insert_many([*many, (event, "bad-payload")])  # type: ignore[assignment]
    with pytest.raises(InvalidValueError) as info:
        await call
    assert info.value.field == "payload"
    assert info.value.problem == "not_json"
    assert (await store.events.query()).events == []


async def test_nul_in_payload_and_metadata_strings_is_stored_faithfully(store: Store) -> None:
    """PostgreSQL's ``json`` column (not ``jsonb``) keeps ``\\u0000`` as written."""
    event = Event(
        event_name="user.created",
        source="razorpay",
        user_id="u1",
        payload={"k\x00": "v\x00", "list": ["\x00", {"x": "a\x00b"}]},
        metadata=EventMetadata(correlation_id="c\x00", headers={"h\x00": "\x00"}),
    )
    await store.events.insert(event, "nul-1")
    other = event.model_copy(update={"id": "evt_nul_2"})
    await store.events.insert_many([(other, "nul-2")])
    for stored in (await store.events.get(event.id), await store.events.get("evt_nul_2")):
        assert stored is not None
        assert stored.event.payload == event.payload
        assert stored.event.metadata == event.metadata
    page = await store.events.query(user_id="u1")
    assert [s.event.payload for s in page.events] == [event.payload, event.payload]


@pytest.mark.parametrize(
    "filters",
    [
        {"user_id": "\x00"},
        {"user_id": "u1\x00"},
        {"source": "a\x00b"},
        {"user_id": "u" * 257},
        {"source": "s" * 65},
        {"user_id": "\ud800"},
        {"user_id": "u1", "source": "razorpay\x00"},
    ],
)
async def test_a_query_value_no_event_can_hold_matches_nothing(
    store: Store, filters: dict[str, str]
) -> None:
    """PostgreSQL cannot even compare text holding U+0000: the store answers as for
    any value that matches nothing, on both databases."""
    await store.events.insert(make_event(source="razorpay", user_id="u1"), "k1")
    page = await store.events.query(**filters)  # type: ignore[arg-type]
    assert page.events == []
    assert not page.has_more
    cursor = encode_cursor(1)
    page = await store.events.query(after=cursor, **filters)  # type: ignore[arg-type]
    assert page.next_cursor == cursor


@pytest.mark.parametrize("event_id", ["\x00", "evt\x00x", "e" * 129, "\ud800"])
async def test_get_of_an_id_no_event_can_have_is_none(store: Store, event_id: str) -> None:
    await store.events.insert(make_event(), "k1")
    assert await store.events.get(event_id) is None
    assert await store.events.mark_published([event_id]) == 0


async def test_concurrent_inserts_from_separate_stores_create_exactly_one(store_url: str) -> None:
    """Separate Store objects share no lock or pool, as separate processes would."""
    from eventmill.store import open_store

    stores = [await open_store(store_url) for _ in range(3)]
    try:
        events = [make_event("razorpay.payment.captured", source="razorpay") for _ in range(12)]
        results = await asyncio.gather(
            *(stores[i % 3].events.insert(e, "shared-key") for i, e in enumerate(events))
        )
        created = [stored for stored, was_created in results if was_created]
        assert len(created) == 1
        assert {stored.id for stored, _ in results} == {created[0].id}
    finally:
        for s in stores:
            await s.close()
