"""Store.sqlite_write, the SQLite one-statement write path behind insert_many and
mark_published: inline on the loop, falling back to the writer thread when another
process holds the database, checkpointing the WAL, excluding in-process transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventmill.events import Event
from eventmill.store import Store, open_store
from eventmill.store.database import CHECKPOINT_EVERY
from eventmill.store.errors import StoreError


def make_event() -> Event:
    return Event(event_name="user.created", source="razorpay", payload={"n": 1})


@pytest.fixture
async def file_store(sqlite_url: str) -> AsyncIterator[Store]:
    s = await open_store(sqlite_url)
    try:
        yield s
    finally:
        await s.close()


def db_path(store: Store) -> str:
    return store.config.url.split(":///", 1)[1]


def rows(store: Store) -> list[tuple[int, str, str | None, str | None]]:
    con = sqlite3.connect(db_path(store))
    try:
        query = "SELECT position, id, external_id, published_at FROM events ORDER BY position"
        return con.execute(query).fetchall()
    finally:
        con.close()


async def test_batch_rows_match_what_insert_many_returns(file_store: Store) -> None:
    events = [make_event() for _ in range(20)]
    results = await file_store.events.insert_many([(e, f"key-{i}") for i, e in enumerate(events)])
    got = {(s.position, s.id, s.external_id) for s, _ in results}
    assert {(p, i, x) for p, i, x, _ in rows(file_store)} == got
    assert [created for _, created in results] == [True] * 20
    again = await file_store.events.get(events[7].id)
    assert again is not None
    assert again.event == events[7]
    assert await file_store.events.mark_published([events[0].id, events[0].id, "evt_nope"]) == 1
    assert await file_store.events.mark_published([events[0].id]) == 0


async def test_waits_for_another_process_holding_the_database(file_store: Store) -> None:
    first = await file_store.events.insert_many([(make_event(), "before")])
    other = sqlite3.connect(db_path(file_store), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database
        event = make_event()
        task = asyncio.create_task(file_store.events.insert_many([(event, "while-locked")]))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not task.done()  # neither failed nor written past the lock
        other.execute("COMMIT")
        [(stored, created)] = await task
    finally:
        other.close()
    assert created
    assert stored.id == event.id
    assert stored.position > first[0][0].position
    assert [r[2] for r in rows(file_store)] == ["before", "while-locked"]


async def test_write_transactions_wait_for_queued_statements(file_store: Store) -> None:
    other = sqlite3.connect(db_path(file_store), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        queued = asyncio.create_task(file_store.events.insert_many([(make_event(), "queued")]))
        for _ in range(50):
            await asyncio.sleep(0)

        async def write_transaction() -> None:
            async with file_store.transaction(write=True) as conn:
                await conn.execute(sa.text("UPDATE events SET user_id = 'tx'"))

        tx = asyncio.create_task(write_transaction())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not tx.done()
        other.execute("COMMIT")
        await asyncio.gather(queued, tx)
    finally:
        other.close()
    con = sqlite3.connect(db_path(file_store))
    try:
        assert con.execute("SELECT external_id, user_id FROM events").fetchall() == [
            ("queued", "tx")
        ]
    finally:
        con.close()


async def test_the_wal_is_checkpointed_as_inline_writes_go_on(file_store: Store) -> None:
    wal = Path(db_path(file_store) + "-wal")
    for i in range(CHECKPOINT_EVERY):
        await file_store.events.insert_many([(make_event(), f"wal-{i}")])
    while file_store._checkpoints.running:  # the checkpoint started by the last write
        await asyncio.sleep(0.01)
    con = sqlite3.connect(db_path(file_store), isolation_level=None)
    try:
        # everything in the WAL is in the database file already: nothing left to copy
        busy, logged, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        con.close()
    assert busy == 0
    assert logged == copied
    assert wal.exists()
    assert len(rows(file_store)) == CHECKPOINT_EVERY


def wal_restarts(store: Store) -> int:
    """How many times the WAL was started over (its header's checkpoint sequence)."""
    with open(db_path(store) + "-wal", "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


async def test_the_wal_starts_over_while_inline_writes_go_on(file_store: Store) -> None:
    # Writes never stop here: a checkpoint running beside them alone never copies the
    # whole WAL, so it would grow for ever. The store finishes each checkpoint between
    # two statements, and the next statement starts the WAL over.
    for i in range(3 * CHECKPOINT_EVERY):
        await file_store.events.insert_many([(make_event(), f"busy-{i}")])
        await asyncio.sleep(0)  # let the checkpoint task and its thread run
    assert wal_restarts(file_store) >= 1
    assert len(rows(file_store)) == 3 * CHECKPOINT_EVERY


async def test_synchronous_full_goes_through_the_writer_thread(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'full.db'}?synchronous=full")
    try:
        event = make_event()
        [(stored, created)] = await store.events.insert_many([(event, "full")])
        assert created
        assert store._inline is None  # never ran a statement on the loop's thread
        got = await store.events.get(event.id)
        assert got is not None
        assert got.position == stored.position
    finally:
        await store.close()


async def test_only_sqlite_file_stores_have_it(tmp_path: Path) -> None:
    store = await open_store("sqlite:///:memory:")
    try:
        with pytest.raises(StoreError):
            await store.sqlite_write("SELECT 1", [])
        [(stored, created)] = await store.events.insert_many([(make_event(), "mem")])
        assert created
        assert await store.events.get(stored.id) is not None
    finally:
        await store.close()
    closed = await open_store(f"sqlite:///{tmp_path / 'closed.db'}")
    await closed.close()
    with pytest.raises(StoreError, match="closed"):
        await closed.sqlite_write("SELECT 1", [])
