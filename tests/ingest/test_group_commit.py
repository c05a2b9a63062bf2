"""GroupCommitInserter against SQLite and PostgreSQL: batching, per-caller results, bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from eventmill.errors import ConfigurationError
from eventmill.events import Event
from eventmill.ingest._group_commit import GroupCommitInserter
from eventmill.store import Store, StoredEvent, open_store
from eventmill.store.errors import DuplicateEventError, StoreError, StoreUnavailableError


def make_event() -> Event:
    return Event(event_name="user.created", source="razorpay")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the ``insert_many`` calls made on ``store`` (the real method does the work)."""
    sizes: list[int] = []
    real = store.events.insert_many

    async def spy(
        items: Sequence[tuple[Event, str | None]], *, published: bool = False
    ) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
        sizes.append(len(items))
        return await real(items, published=published)

    monkeypatch.setattr(store.events, "insert_many", spy)
    return sizes


@contextlib.asynccontextmanager
async def writer(inserter: GroupCommitInserter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(inserter.run())
    try:
        yield task
    finally:
        await inserter.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def queued(inserter: GroupCommitInserter, n: int) -> None:
    """Yield to the loop until ``n`` requests wait for the writer."""
    while inserter.pending < n:
        await asyncio.sleep(0)


async def test_one_batch_gives_each_caller_its_own_committed_result(
    store: Store, store_url: str, batches: list[int]
) -> None:
    earlier, _ = await store.events.insert(make_event(), "old")
    taken = make_event()
    await store.events.insert(taken, "taken-key")
    a, b, c, d = (make_event() for _ in range(4))
    requests: list[tuple[Event, str | None]] = [
        (a, "k1"),
        (b, "k1"),  # same key as a, in the same batch
        (c, "old"),  # key stored before
        (d, None),  # no key: dedup by id
        (d, None),
        (taken, "another-key"),  # id taken by another key: only this caller fails
    ]
    inserter = GroupCommitInserter(store)
    tasks = [asyncio.create_task(inserter.insert(e, x)) for e, x in requests]
    await queued(inserter, len(requests))
    async with writer(inserter):
        with pytest.raises(DuplicateEventError):
            await tasks[5]
        (ra, ca), (rb, cb), (rc, cc), (rd1, cd1), (rd2, cd2) = await asyncio.gather(*tasks[:5])
    assert batches == [len(requests)]
    assert (ca, cb, cc, cd1, cd2) == (True, False, False, True, False)
    assert rb.id == ra.id == a.id
    assert rc.id == earlier.id
    assert rd1.id == rd2.id == d.id
    other = await open_store(store_url)  # another pool: sees only committed rows
    try:
        for stored in (ra, rd1):
            got = await other.events.get(stored.id)
            assert got is not None
            assert got.position == stored.position
        assert await other.events.get(b.id) is None
    finally:
        await other.close()


async def test_batches_are_capped_by_max_batch(store: Store, batches: list[int]) -> None:
    inserter = GroupCommitInserter(store, max_batch=3)
    events = [make_event() for _ in range(7)]
    tasks = [asyncio.create_task(inserter.insert(e, f"cap-{i}")) for i, e in enumerate(events)]
    await queued(inserter, len(events))
    async with writer(inserter):
        results = await asyncio.gather(*tasks)
    assert batches == [3, 3, 1]
    assert [(s.id, created) for s, created in results] == [(e.id, True) for e in events]
    assert len({s.position for s, _ in results}) == len(events)


async def test_batches_in_flight_together_each_get_their_own_results(
    store: Store, batches: list[int]
) -> None:
    inserter = GroupCommitInserter(store, max_batch=2, max_in_flight=3)
    events = [make_event() for _ in range(6)]
    tasks = [asyncio.create_task(inserter.insert(e, f"fly-{i % 5}")) for i, e in enumerate(events)]
    await queued(inserter, len(events))
    async with writer(inserter):
        results = await asyncio.gather(*tasks)
    assert batches == [2, 2, 2]
    assert [created for _, created in results[1:5]] == [True] * 4
    # Events 0 and 5 share a key and sit in batches that are in flight together:
    # on PostgreSQL either may commit first. Exactly one is created; the other gets it.
    first, last = results[0], results[5]
    assert sorted([first[1], last[1]]) == [False, True]
    winner = first[0] if first[1] else last[0]
    assert first[0].id == last[0].id == winner.id
    assert winner.id in (events[0].id, events[5].id)
    for stored, _ in results[:5]:
        got = await store.events.get(stored.id)
        assert got is not None
        assert got.position == stored.position


async def test_a_whole_batch_error_reaches_every_caller_and_the_writer_goes_on(
    store: Store,
) -> None:
    inserter = GroupCommitInserter(store)
    tasks = [asyncio.create_task(inserter.insert(make_event(), None)) for _ in range(3)]
    await queued(inserter, 3)
    await store.close()
    async with writer(inserter) as task:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, StoreError) and "closed" in str(r) for r in results)
        assert not task.done()
        with pytest.raises(StoreError, match="closed"):
            await inserter.insert(make_event(), None)


async def test_a_bad_external_id_fails_only_its_caller(store: Store, batches: list[int]) -> None:
    inserter = GroupCommitInserter(store)
    async with writer(inserter):
        results = await asyncio.gather(
            inserter.insert(make_event(), "good-1"),
            inserter.insert(make_event(), "k" * 257),
            inserter.insert(make_event(), "good-2"),
            return_exceptions=True,
        )
    assert isinstance(results[1], StoreError)
    assert [r[1] for r in results if isinstance(r, tuple)] == [True, True]
    assert sum(batches) == 2


async def test_waiting_requests_are_bounded_and_failed_on_close(store: Store) -> None:
    inserter = GroupCommitInserter(store, max_pending=2)
    events = [make_event() for _ in range(3)]
    tasks = [asyncio.create_task(inserter.insert(e, None)) for e in events]
    await queued(inserter, 2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert inserter.pending == 2
    assert not any(t.done() for t in tasks)  # the third waits for room
    await inserter.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert inserter.pending == 0
    with pytest.raises(StoreUnavailableError):
        await inserter.insert(make_event(), None)
    for e in events:
        assert await store.events.get(e.id) is None


async def test_a_caller_that_gave_up_is_left_out_of_the_batch(
    store: Store, batches: list[int]
) -> None:
    inserter = GroupCommitInserter(store)
    gone, kept = make_event(), make_event()
    gave_up = asyncio.create_task(inserter.insert(gone, None))
    waiting = asyncio.create_task(inserter.insert(kept, None))
    await queued(inserter, 2)
    gave_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    async with writer(inserter):
        stored, created = await waiting
    assert created
    assert stored.id == kept.id
    assert batches == [1]
    assert await store.events.get(gone.id) is None


def test_limits_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        GroupCommitInserter(None, max_pending=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        GroupCommitInserter(None, max_in_flight=0)  # type: ignore[arg-type]
