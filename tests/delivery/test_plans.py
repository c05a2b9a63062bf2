"""Every statement of the delivery store uses an index on a large table.

The statements are captured while the store's methods run against 200,000
deliveries (and as many attempts), then explained: SQLite's EXPLAIN QUERY PLAN must
show no full table scan and no sort of a whole result; PostgreSQL's EXPLAIN (after
ANALYZE) no sequential scan of the delivery tables.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from eventmill.delivery.store import Claimed, DeliveryStore, Outcome
from eventmill.store import open_store

ROWS = 200_000
TABLES = ("deliveries", "delivery_attempts", "delivery_endpoints", "delivery_events")

_FILL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
INSERT INTO deliveries (id, event_id, endpoint_id, user_id, event_name, status, attempts, step,
                        next_attempt_at, created_at)
SELECT printf('dlv_%026d', i), printf('evt_%d', i), printf('ep_%03d', i % 100),
       printf('user_%d', i % 100), 'order.created',
       CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 20 = 0 THEN 'pending' ELSE 'succeeded' END,
       1, 1, CASE WHEN i % 20 = 0 AND i % 50 != 0 THEN '2030-01-01 00:00:00.000000' END,
       '2025-01-01 00:00:00.000000'
FROM n
"""
_ENDPOINTS_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999)
INSERT INTO delivery_endpoints (id, user_id, url, description, event_types, headers, disabled,
                                secret, created_at, updated_at)
SELECT printf('ep_%03d', i), printf('user_%d', i), 'https://example.com', '', '[]', '{}', 0,
       'whsec_AAAA', '2025-01-01 00:00:00.000000', '2025-01-01 00:00:00.000000'
FROM n
"""
_ENDPOINTS_PG = """
INSERT INTO delivery_endpoints (id, user_id, url, description, event_types, headers, disabled,
                                secret, created_at, updated_at)
SELECT 'ep_' || CASE WHEN i < 1000 THEN lpad(i::text, 3, '0') ELSE i::text END,
       'user_' || i, 'https://example.com', '', '[]', '{}', false, 'whsec_AAAA',
       timestamptz '2025-01-01', timestamptz '2025-01-01'
FROM generate_series(0, 19999) AS i
"""
_FILL_ATTEMPTS_SQLITE = """
INSERT INTO delivery_attempts (delivery_id, attempt, started_at, outcome)
SELECT id, 1, created_at, 'success' FROM deliveries
"""
_FILL_PG = """
INSERT INTO deliveries (id, event_id, endpoint_id, user_id, event_name, status, attempts, step,
                        next_attempt_at, created_at)
SELECT 'dlv_' || lpad(i::text, 26, '0'), 'evt_' || i, 'ep_' || lpad((i % 100)::text, 3, '0'),
       'user_' || (i % 100), 'order.created',
       CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 20 = 0 THEN 'pending' ELSE 'succeeded' END,
       1, 1, CASE WHEN i % 20 = 0 AND i % 50 != 0 THEN timestamptz '2030-01-01' END,
       timestamptz '2025-01-01'
FROM generate_series(1, {rows}) AS i
"""
_FILL_ATTEMPTS_PG = """
INSERT INTO delivery_attempts (delivery_id, attempt, started_at, outcome)
SELECT id, 1, created_at, 'success' FROM deliveries
"""


def _bad_sqlite(plan: list[str], statement: str) -> list[str]:
    # Filtered by event, the rows are that event's deliveries (one per matching
    # endpoint, found through the unique index): sorting those few is fine.
    by_event = "WHERE deliveries.event_id = ? ORDER BY" in statement
    bad = []
    for line in plan:
        words = line.split()
        sort = "TEMP B-TREE" in line and "ORDER BY" in line and not by_event
        scan = len(words) >= 2 and words[0] == "SCAN" and words[1] in TABLES
        if sort or (scan and "USING" not in line):
            bad.append(line)
    return bad


def _bad_pg(plan: Any) -> list[str]:
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in TABLES:
            bad.append(f"Seq Scan on {node['Relation Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return bad


async def test_every_statement_uses_an_index(store_url: str) -> None:
    store = await open_store(store_url)
    ds = DeliveryStore(store)
    pg = store.dialect == "postgresql"
    try:
        eps = [
            await ds.create_endpoint(url=f"https://example.com/{i}", user_id=f"user_{i}")
            for i in range(3)
        ]
        async with store.transaction(write=True) as conn:
            ids = [e.id for e in eps]
            # the generated rows reference endpoints ep_000 … ep_099; 20,000 endpoints
            await conn.execute(sa.text(_ENDPOINTS_PG if pg else _ENDPOINTS_SQLITE))
            await conn.execute(sa.text((_FILL_PG if pg else _FILL_SQLITE).format(rows=ROWS)))
            await conn.execute(sa.text(_FILL_ATTEMPTS_PG if pg else _FILL_ATTEMPTS_SQLITE))
            await conn.execute(
                sa.text(
                    "INSERT INTO delivery_events (event_id, event_name, body, created_at) "
                    "SELECT event_id, event_name, :body, created_at FROM deliveries"
                ),
                {"body": b"{}"},
            )
        async with store.transaction(write=True) as conn:
            await conn.execute(sa.text("ANALYZE"))

        captured: list[tuple[str, Any]] = []

        def capture(
            conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool
        ) -> None:
            head = statement.lstrip().split(None, 1)[0].upper()
            if head in ("SELECT", "UPDATE", "DELETE", "WITH"):
                captured.append((statement, params[0] if many else params))

        sa_event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
        try:
            now = datetime.now(UTC)
            await ds.list_endpoints(user_id="user_1", limit=10)
            await ds.list_endpoints(limit=10)
            await ds.matching_endpoints(["user_1", "user_2"])
            await ds.get_endpoint(ids[0])
            await ds.list_deliveries(endpoint_id="ep_001", limit=10)
            await ds.list_deliveries(endpoint_id="ep_001", status="failed", limit=10)
            await ds.list_deliveries(user_id="user_1", limit=10)
            await ds.list_deliveries(status="failed", limit=10)
            await ds.list_deliveries(event_id="evt_20", limit=10)
            page = await ds.list_deliveries(limit=10)
            await ds.list_deliveries(after=page.next_cursor, limit=10)
            await ds.get_delivery("dlv_" + "0" * 24 + "20")
            await ds.attempts_of("dlv_" + "0" * 24 + "20")
            await ds.retry_delivery("dlv_" + "0" * 24 + "40")
            await ds.recover("ep_001", now - timedelta(days=3650))
            claim = await ds.claim(10, lease_seconds=60, exclude=["ep_002"])
            await ds.release(claim.deliveries)
            claimed = Claimed("dlv_" + "0" * 24 + "60", "evt_60", "ep_060", "x", 1, 1, "tok")
            await ds.record(
                [
                    Outcome(
                        claimed.id,
                        "tok",
                        2,
                        2,
                        now,
                        200,
                        1.0,
                        "success",
                        None,
                        "ok",
                        "succeeded",
                        None,
                    )
                ]
            )
            await ds.undead(10)
            await ds.mark_dead(["dlv_" + "0" * 24 + "50"])
            await ds.due_count()
            await ds.mark_failing("ep_003", now)
            await ds.mark_healthy("ep_003")
            await ds.disable("ep_004", "test", failing_before=now)
            await ds.context([claimed])
            await ds.delete_endpoint("ep_005")
        finally:
            sa_event.remove(store.engine.sync_engine, "before_cursor_execute", capture)

        problems: list[str] = []
        async with store.transaction(write=False) as conn:
            for statement, params in captured:
                if pg:
                    result = await conn.exec_driver_sql(
                        "EXPLAIN (FORMAT JSON) " + statement, params
                    )
                    raw = result.scalar_one()
                    plan = json.loads(raw) if isinstance(raw, str) else raw
                    bad = _bad_pg(plan)
                else:
                    result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                    bad = _bad_sqlite([str(r[-1]) for r in result], statement)
                if bad:
                    problems.append(f"{' '.join(statement.split())[-300:]}\n    -> {bad}")
        assert len(captured) > 25
        assert not problems, "\n".join(problems)
    finally:
        await store.close()
