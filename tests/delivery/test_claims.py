"""A claim's cost does not depend on the backlog of an endpoint it skips.

A hanging endpoint's lane is full, so claims skip it, while its due deliveries pile up
in the store (100,000 here, all due before the healthy endpoint's). The claim's
statements are captured, then run again in a transaction that is rolled back, and
measured: on SQLite, the virtual machine instructions they take (counted by a progress
handler); on PostgreSQL, the buffers they touch (``EXPLAIN (ANALYZE, BUFFERS)``). Both
stay far below what walking the backlog costs, which the same measure shows for the
query a claim used to make.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from eventmill.delivery._ids import new_id
from eventmill.delivery.store import DeliveryStore, FanoutEvent, NewDelivery
from eventmill.store import Store, open_store

BACKLOG = 100_000
HEALTHY = 5
SQLITE_STEPS = 50_000
"""VM instructions: the claim's statements take a few thousand; walking the backlog's
index entries takes millions."""
PG_BUFFERS = 300
"""Buffers (8 KiB pages): the claim touches a few dozen; walking the backlog, hundreds."""

_FILL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
INSERT INTO deliveries (id, event_id, endpoint_id, user_id, event_name, status, attempts, step,
                        next_attempt_at, created_at)
SELECT printf('dlv_0%025d', i), printf('evt_h%d', i), :ep, 'u1', 'order.created', 'pending',
       0, 0, '2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000'
FROM n
"""
_FILL_PG = """
INSERT INTO deliveries (id, event_id, endpoint_id, user_id, event_name, status, attempts, step,
                        next_attempt_at, created_at)
SELECT 'dlv_0' || lpad(i::text, 25, '0'), 'evt_h' || i, :ep, 'u1', 'order.created', 'pending',
       0, 0, timestamptz '2025-01-01', timestamptz '2025-01-01'
FROM generate_series(1, {rows}) AS i
"""
_OLD_CLAIM = (
    "SELECT id FROM deliveries WHERE next_attempt_at <= {now} AND endpoint_id NOT IN ({ep}) "
    "ORDER BY next_attempt_at LIMIT 10"
)


async def _setup(store: Store) -> tuple[DeliveryStore, str, str]:
    ds = DeliveryStore(store)
    hanging = await ds.create_endpoint(url="https://hang.example.com/", user_id="u1")
    healthy = await ds.create_endpoint(url="https://ok.example.com/", user_id="u1")
    pg = store.dialect == "postgresql"
    async with store.transaction(write=True) as conn:
        fill = (_FILL_PG if pg else _FILL_SQLITE).format(rows=BACKLOG)
        await conn.execute(sa.text(fill), {"ep": hanging.id})
        await conn.execute(
            sa.text(
                "UPDATE delivery_endpoints SET next_due_at = next_attempt_at FROM "
                "(SELECT min(next_attempt_at) AS next_attempt_at FROM deliveries) AS d "
                "WHERE delivery_endpoints.id = :ep"
            ),
            {"ep": hanging.id},
        )
    now = datetime.now(UTC) - timedelta(seconds=1)
    events = [FanoutEvent(f"evt_g{i}", "order.created", "u1", b"{}") for i in range(HEALTHY)]
    rows = [
        NewDelivery(new_id("dlv"), e.event_id, healthy.id, "u1", e.event_name, now, None)
        for e in events
    ]
    await ds.record_fanout(events, rows)
    async with store.transaction(write=True) as conn:
        await conn.execute(sa.text("ANALYZE"))
    return ds, hanging.id, healthy.id


async def _claim_statements(
    store: Store, ds: DeliveryStore, hanging: str
) -> tuple[list[tuple[str, Any]], list[str]]:
    """Claim with the hanging endpoint's lane full; its statements, and who got what."""
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        captured.append((statement, params))

    sa_event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        claim = await ds.claim(10, lease_seconds=60, exclude=[hanging])
    finally:
        sa_event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    return captured, [c.endpoint_id for c in claim.deliveries]


async def _undo_claim(store: Store, healthy: str) -> None:
    """Make the healthy endpoint's deliveries due again, as before the claim."""
    async with store.transaction(write=True) as conn:
        await conn.execute(
            sa.text(
                "UPDATE deliveries SET next_attempt_at = :t, lease_token = NULL "
                "WHERE endpoint_id = :ep"
            ),
            {"t": datetime.now(UTC) - timedelta(seconds=1), "ep": healthy},
        )
        await conn.execute(
            sa.text("UPDATE delivery_endpoints SET next_due_at = :t WHERE id = :ep"),
            {"t": datetime.now(UTC) - timedelta(seconds=1), "ep": healthy},
        )


def _sqlite_steps(path: str, statements: list[tuple[str, Any]]) -> int:
    """VM instructions the statements take, run in a transaction rolled back."""
    con = sqlite3.connect(path, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 100
        return 0

    try:
        con.execute("BEGIN")
        con.set_progress_handler(count, 100)
        for statement, params in statements:
            con.execute(statement, params).fetchall()
        con.set_progress_handler(None, 0)
        con.execute("ROLLBACK")
    finally:
        con.close()
    return steps


async def _pg_buffers(store: Store, statements: list[tuple[str, Any]]) -> int:
    """Shared buffers the statements touch, run in a transaction rolled back."""
    total = 0
    async with store.engine.connect() as conn:
        transaction = await conn.begin()
        try:
            for statement, params in statements:
                result = await conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params
                )
                raw = result.scalar_one()
                plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
                total += plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
        finally:
            await transaction.rollback()
    return total


def _sqlite_path(store: Store) -> str:
    return store.config.url.split(":///", 1)[1].split("?", 1)[0]


async def test_a_claim_does_not_walk_a_skipped_endpoints_backlog(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        ds, hanging, healthy = await _setup(store)
        captured, got = await _claim_statements(store, ds, hanging)
        assert got == [healthy] * HEALTHY  # every healthy one, none of the backlog
        statements = [
            (s, p) for s, p in captured if s.lstrip().split(None, 1)[0].upper() != "BEGIN"
        ]
        await _undo_claim(store, healthy)
        now = datetime.now(UTC)
        if store.dialect == "sqlite":
            path = _sqlite_path(store)
            cost = _sqlite_steps(path, statements)
            old = _OLD_CLAIM.format(now="?", ep="?")
            walked = _sqlite_steps(path, [(old, (now.strftime("%Y-%m-%d %H:%M:%S.%f"), hanging))])
            bound = SQLITE_STEPS
        else:
            cost = await _pg_buffers(store, statements)
            old = _OLD_CLAIM.format(now="$1", ep="$2")
            walked = await _pg_buffers(store, [(old, (now, hanging))])
            bound = PG_BUFFERS
        assert walked > bound, f"the measure does not show a walk over the backlog: {walked}"
        assert cost < bound, f"the claim cost {cost} with {BACKLOG:,} skipped deliveries due"
    finally:
        await store.close()


async def test_a_full_lane_by_room_is_skipped_without_touching_its_deliveries(
    store_url: str,
) -> None:
    store = await open_store(store_url)
    try:
        ds, hanging, healthy = await _setup(store)
        claim = await ds.claim(10, lease_seconds=60, room=lambda ep: 0 if ep.id == hanging else 10)
        assert [c.endpoint_id for c in claim.deliveries] == [healthy] * HEALTHY
        async with store.transaction(write=False) as conn:
            leased = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM deliveries WHERE lease_token IS NOT NULL")
                )
            ).scalar_one()
        assert leased == HEALTHY
    finally:
        await store.close()


def _migrate_sqlite_to(path: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from eventmill.store.database import MIGRATIONS_DIR

    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


async def test_migration_0007_keeps_deliveries_and_notes_each_endpoints_due_time(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "events.db")
    _migrate_sqlite_to(path, "0006")
    con = sqlite3.connect(path)
    with con:
        con.execute("PRAGMA foreign_keys = ON")
        con.execute(
            "INSERT INTO delivery_endpoints (id, user_id, url, description, event_types, headers,"
            " disabled, secret, created_at, updated_at) VALUES ('ep_1', 'u1', 'https://x', '',"
            " '[]', '{}', 0, 'whsec_AAAA', '2025-01-01 00:00:00.000000',"
            " '2025-01-01 00:00:00.000000')"
        )
        for i, due in enumerate(("2025-01-02 00:00:00.000000", "2025-01-01 12:00:00.000000")):
            con.execute(
                "INSERT INTO deliveries (id, event_id, endpoint_id, event_name, status, attempts,"
                " step, next_attempt_at, created_at) VALUES (?, ?, 'ep_1', 'x.y', 'pending', 0, 0,"
                " ?, '2025-01-01 00:00:00.000000')",
                (f"dlv_{i}", f"evt_{i}", due),
            )
    con.close()
    store = await open_store(f"sqlite:///{path}")
    try:
        async with store.transaction(write=False) as conn:
            kept = (await conn.execute(sa.text("SELECT count(*) FROM deliveries"))).scalar_one()
            due = (
                await conn.execute(sa.text("SELECT next_due_at FROM delivery_endpoints"))
            ).scalar_one()
        assert kept == 2
        assert str(due).startswith("2025-01-01 12:00:00")
        claim = await DeliveryStore(store).claim(10, lease_seconds=60)
        assert sorted(c.id for c in claim.deliveries) == ["dlv_0", "dlv_1"]
    finally:
        await store.close()
