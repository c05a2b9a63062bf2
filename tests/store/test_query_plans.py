"""Every statement the store runs uses an index, on a store of 100,000 events.

A statement that is fast on a thousand rows and scans at a million is how such
services fall over (the duplicate lookup did: ``(source, external_id) IN (VALUES …)``
made SQLite scan the unique index). Each case below calls the store's real API on a
large store, captures every statement it runs (SQLAlchemy's ``before_cursor_execute``
and the SQLite fast path's :meth:`Store.sqlite_write`), and checks each one:

* its plan (SQLite ``EXPLAIN QUERY PLAN``; PostgreSQL ``EXPLAIN``, after ``ANALYZE``)
  reads no table whole: no ``SCAN`` of a table except through a partial index or for
  an unfiltered page (``ORDER BY … LIMIT`` with no ``WHERE``), no automatic index, no
  sort unless every table access under it is an index ``SEARCH``; on PostgreSQL no
  ``Seq Scan``;
* its work, measured, is a small part of the store: SQLite virtual-machine steps
  (a progress handler) below a quarter of the number of events, plus 20 for each value
  the statement is given (skipping an event takes 3-5 steps; the heaviest query here
  takes about 16,000, a 500-row insert about 35,000); PostgreSQL rows read from any
  table (``EXPLAIN ANALYZE``, rolled back) below a twentieth of the events (the
  heaviest about 1,000). The filter values each match at most 1% of the events, so a
  statement that walks a table (or a large part of it) to find them fails.

The journal's tables are filled too (100,000 hops, 9,000 rejected webhooks). A
statement the store runs that no case covers is not checked: a new method needs a
case here. ``ApiKeyStore.list`` reads the whole (small) ``api_keys`` table by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from eventmill.events import Event
from eventmill.store import Store, open_store
from tests.conftest import require_service
from tests.store.conftest import PG_BASE, PG_HOST, PG_PORT, drop_schema

EVENTS = 100_000
"""Events in the filled store."""
MAX_STEPS = EVENTS // 4
"""SQLite: most virtual-machine steps a statement may take, beyond
:data:`STEPS_PER_PARAMETER` for each value it is given (a 500-row INSERT does work in
proportion to its rows, not to the store)."""
STEPS_PER_PARAMETER = 20
MAX_ROWS = EVENTS // 20
"""PostgreSQL: most rows of one table a statement may read."""
KEYS = 2_000
"""API keys in the filled store (enough that PostgreSQL's planner uses its index)."""
T0 = datetime.fromtimestamp(1_700_000_000, UTC)
"""``created_at`` of event 0; event ``i`` was created about ``i`` seconds later."""
SOURCES = ("razorpay", "github", "internal", "stripe")
"""Event ``i`` comes from ``SOURCES[i % 4]`` (``internal`` events have no external id)."""

# Event i: source SOURCES[i % 4], name "<source>.kind_<(i // 4) % 25>.done" (100 names,
# 1% of the events each), user "user_<i % 2000>" (0.05% each), created at T0 + i s
# (+ up to a minute out of order), one in a thousand never published.
_COLUMNS = (
    "id, source, external_id, event_name, user_id, payload, metadata, "
    "created_at, processed_at, stored_at, published_at"
)
_METADATA = '{"version":"1.0","correlation_id":"","trace_id":"","headers":{},"retry_count":0}'
_SQLITE_FILL = f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {EVENTS - 1})
INSERT INTO events ({_COLUMNS})
SELECT 'evt_fill_' || i, s.source,
       CASE WHEN s.source = 'internal' THEN NULL ELSE 'ext_' || i END,
       s.source || '.kind_' || ((i / 4) % 25) || '.done', 'user_' || (i % 2000),
       '{{"i":' || i || '}}', '{_METADATA}',
       strftime('%Y-%m-%d %H:%M:%f000', {int(T0.timestamp())} + i + (i * 7919) % 61,
                'unixepoch'),
       NULL,
       strftime('%Y-%m-%d %H:%M:%f000', {int(T0.timestamp())} + i, 'unixepoch'),
       CASE WHEN i % 1000 = 999 THEN NULL
            ELSE strftime('%Y-%m-%d %H:%M:%f000', {int(T0.timestamp())} + i, 'unixepoch') END
FROM n JOIN (SELECT 0 AS k, 'razorpay' AS source UNION ALL SELECT 1, 'github'
             UNION ALL SELECT 2, 'internal' UNION ALL SELECT 3, 'stripe') AS s
     ON s.k = i % 4
"""
_PG_FILL = f"""
INSERT INTO events ({_COLUMNS})
SELECT 'evt_fill_' || i, s.source,
       CASE WHEN s.source = 'internal' THEN NULL ELSE 'ext_' || i END,
       s.source || '.kind_' || ((i / 4) % 25) || '.done', 'user_' || (i % 2000),
       ('{{"i":' || i || '}}')::json, '{_METADATA}'::json,
       to_timestamp({int(T0.timestamp())} + i + (i * 7919) % 61), NULL,
       to_timestamp({int(T0.timestamp())} + i),
       CASE WHEN i % 1000 = 999 THEN NULL ELSE to_timestamp({int(T0.timestamp())} + i) END
FROM generate_series(0, {EVENTS - 1}) AS i
JOIN (VALUES (0, 'razorpay'), (1, 'github'), (2, 'internal'), (3, 'stripe')) AS s(k, source)
  ON s.k = i % 4
"""
_KEYS_FILL = """
INSERT INTO api_keys (id, name, prefix, hash, scopes, created_at)
SELECT {hex}, 'fill', 'em_fill', 'x', {scopes}, {now}
FROM {numbers}
"""


HOPS = EVENTS
"""Journal hops in the filled store: one a second until now, the first 100 a month old
(the ones ``prune`` deletes)."""
REJECTED = 9_000
"""Rejected webhooks in the filled store (fewer than the journal keeps)."""
_SQLITE_JOURNAL = [
    f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {HOPS - 1})
INSERT INTO event_hops (event_id, at, hop, detail)
SELECT 'evt_fill_' || (i / 3), strftime('%Y-%m-%d %H:%M:%f000', 'now',
       CASE WHEN i < 100 THEN '-30 days' ELSE '-' || ({HOPS} - i) || ' seconds' END),
       'stored', '{{}}'
FROM n
""",
    f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {REJECTED - 1})
INSERT INTO rejected_webhooks (at, source, status, reason, message, headers)
SELECT strftime('%Y-%m-%d %H:%M:%f000', 'now', '-' || ({REJECTED} - i) || ' seconds'),
       CASE WHEN i % 2 = 0 THEN 'razorpay' ELSE 'github' END, 401, 'invalid_signature',
       'bad signature', '{{}}'
FROM n
""",
]
_PG_JOURNAL = [
    f"""
INSERT INTO event_hops (event_id, at, hop, detail)
SELECT 'evt_fill_' || (i / 3),
       CASE WHEN i < 100 THEN now() - interval '30 days'
            ELSE now() - make_interval(secs => {HOPS} - i) END,
       'stored', '{{}}'::json
FROM generate_series(0, {HOPS - 1}) AS i
""",
    f"""
INSERT INTO rejected_webhooks (at, source, status, reason, message, headers)
SELECT now() - make_interval(secs => {REJECTED} - i),
       CASE WHEN i % 2 = 0 THEN 'razorpay' ELSE 'github' END, 401, 'invalid_signature',
       'bad signature', '{{}}'::json
FROM generate_series(0, {REJECTED - 1}) AS i
""",
    "ANALYZE event_hops",
    "ANALYZE rejected_webhooks",
]


def _fill_sql(dialect: str) -> list[str]:
    if dialect == "sqlite":
        keys = _KEYS_FILL.format(
            hex="printf('%012x', 1000000 + k.i)",
            scopes="'[\"read\"]'",
            now="'2024-01-01 00:00:00.000000'",
            numbers=f"(WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k "
            f"WHERE i < {KEYS - 1}) SELECT i FROM k) AS k",
        )
        return [_SQLITE_FILL, keys, *_SQLITE_JOURNAL]
    keys = _KEYS_FILL.format(
        hex="lpad(to_hex(1000000 + k.i), 12, '0')",
        scopes="'[\"read\"]'::json",
        now="now()",
        numbers=f"generate_series(0, {KEYS - 1}) AS k(i)",
    )
    return [_PG_FILL, keys, "ANALYZE events", "ANALYZE api_keys", *_PG_JOURNAL]


async def _fill(url: str) -> None:
    async with await open_store(url) as store, store.transaction(write=True) as conn:
        for sql in _fill_sql(store.dialect):
            await conn.exec_driver_sql(sql)


@pytest.fixture(scope="module")
def sqlite_filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'store.db'}"
    asyncio.run(_fill(url))
    return url


@pytest.fixture(scope="module")
def pg_filled() -> Iterator[str]:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    schema = f"em_test_plans_{uuid.uuid4().hex[:12]}"
    url = f"{PG_BASE}?schema={schema}"
    try:
        asyncio.run(_fill(url))
        yield url
    finally:
        asyncio.run(drop_schema(schema))


@pytest.fixture(params=["sqlite", "postgresql"])
def filled_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_filled")
    return url


# -- capturing the statements ----------------------------------------------------------


@dataclass
class Captured:
    sql: str
    params: tuple[Any, ...]


_SKIPPED = re.compile(
    r"^\s*(PRAGMA|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|SELECT pg_advisory_xact_lock|SELECT 1\b)",
    re.IGNORECASE,
)


@dataclass
class Recorder:
    statements: list[Captured] = field(default_factory=list)

    def add(self, sql: str, params: Any) -> None:
        if _SKIPPED.match(sql):
            return
        if isinstance(params, dict):
            raise AssertionError(f"named parameters not expected: {sql}")
        self.statements.append(Captured(sql, tuple(params or ())))


@pytest.fixture
async def recorded(filled_url: str) -> AsyncIterator[tuple[Store, Recorder]]:
    store = await open_store(filled_url)
    recorder = Recorder()

    def on_execute(conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        if many and params and isinstance(params[0], list | tuple):  # a plain executemany
            params = params[0]  # (insertmanyvalues passes one flat batch)
        recorder.add(sql, params)

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", on_execute)
    real_write = store.sqlite_write

    async def sqlite_write(sql: str, args: Any) -> list[Any]:
        recorder.add(sql, args)
        return await real_write(sql, args)

    store.sqlite_write = sqlite_write  # type: ignore[method-assign]
    try:
        yield store, recorder
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", on_execute)
        await store.close()


# -- the cases: every store method, every query filter and combination -------------------


def _event(i: int, **kwargs: Any) -> Event:
    source = SOURCES[i % 4]
    return Event(
        event_name=f"{source}.kind_{(i // 4) % 25}.done",
        source=source,
        user_id=f"user_{i % 2000}",
        payload={"i": i},
        **kwargs,
    )


SINCE = T0 + timedelta(seconds=EVENTS - 1_000)
UNTIL = T0 + timedelta(seconds=1_000)
WINDOW = (T0 + timedelta(seconds=50_000), T0 + timedelta(seconds=51_000))

Case = Callable[[Store], Awaitable[object]]


async def _insert_new(store: Store) -> object:
    return await store.events.insert(_event(1), f"new-{uuid.uuid4().hex}")


async def _insert_duplicate_key(store: Store) -> object:
    stored, created = await store.events.insert(_event(5), "ext_5")  # github, stored
    assert not created
    assert stored.id == "evt_fill_5"
    return stored


async def _insert_duplicate_id(store: Store) -> object:
    event = _event(6).model_copy(update={"id": "evt_fill_6"})  # internal: no external id
    stored, created = await store.events.insert_if_absent_by_id(event)
    assert not created
    assert stored.id == "evt_fill_6"
    return stored


async def _insert_many_new(store: Store) -> object:
    return await store.events.insert_many(
        [(_event(i), f"new-{uuid.uuid4().hex}") for i in range(3)]
    )


async def _insert_many_duplicates(store: Store) -> object:
    """A retry storm's batch: keys of two sources and a bare id, all stored."""
    items: list[tuple[Event, str | None]] = [(_event(i), f"ext_{i}") for i in (1, 3, 5, 401, 403)]
    items.append((_event(6).model_copy(update={"id": "evt_fill_6"}), None))
    results = await store.events.insert_many(items)
    assert [r[0].id for r in results if isinstance(r, tuple) and not r[1]] == [
        "evt_fill_1",
        "evt_fill_3",
        "evt_fill_5",
        "evt_fill_401",
        "evt_fill_403",
        "evt_fill_6",
    ]
    return results


async def _insert_many_duplicates_large(store: Store) -> object:
    """More than one chunk (500): the SQLAlchemy path on SQLite too."""
    items: list[tuple[Event, str | None]] = [(_event(i), f"ext_{i}") for i in range(1, 2_400, 4)]
    results = await store.events.insert_many(items)
    assert all(isinstance(r, tuple) and not r[1] for r in results)
    return results


async def _mark_published(store: Store) -> object:
    return await store.events.mark_published(["evt_fill_999", "evt_fill_1999", "evt_fill_7"])


async def _mark_published_large(store: Store) -> object:
    return await store.events.mark_published([f"evt_fill_{i}" for i in range(0, 60_000, 99)])


async def _unpublished(store: Store) -> object:
    found = await store.events.unpublished(limit=10)
    assert found
    return found


async def _unpublished_older(store: Store) -> object:
    return await store.events.unpublished(limit=10, older_than=3600)


async def _get(store: Store) -> object:
    assert await store.events.get("evt_fill_77") is not None
    return await store.events.get("evt_missing")


async def _query_page_then_next(store: Store, **filters: Any) -> object:
    """A page and the page after it (the cursor's statement)."""
    page = await store.events.query(limit=10, **filters)
    if page.next_cursor is not None:
        await store.events.query(limit=10, after=page.next_cursor, **filters)
    return page


def _query(**filters: Any) -> Case:
    async def case(store: Store) -> object:
        return await _query_page_then_next(store, **filters)

    return case


async def _api_keys(store: Store) -> object:
    record, plaintext = await store.api_keys.create("plans", {"read"})
    assert await store.api_keys.verify(plaintext) is not None
    assert await store.api_keys.get(record.id) is not None
    assert await store.api_keys.revoke(record.id)
    return record


async def _journal_flush(store: Store) -> object:
    store.journal.hop("evt_fill_7", "published", topic="events")
    store.journal.hops_many(["evt_fill_8", "evt_fill_9"], "stored")
    store.journal.rejected(
        source="github", status=401, reason="invalid_signature", message="no", headers={}
    )
    await store.journal.flush()
    return None


async def _journal_prune(store: Store) -> object:
    await store.journal.prune()
    return None


async def _journal_reads(store: Store) -> object:
    assert await store.journal.hops("evt_fill_7")
    assert await store.journal.rejections(limit=10)
    assert await store.journal.rejections(source="github", limit=10)
    assert await store.journal.rejections(before=5_000, limit=10)
    return await store.journal.rejections(source="razorpay", before=5_000, limit=10)


CASES: dict[str, Case] = {
    "insert new": _insert_new,
    "insert duplicate key": _insert_duplicate_key,
    "insert duplicate id": _insert_duplicate_id,
    "insert_many new": _insert_many_new,
    "insert_many duplicates": _insert_many_duplicates,
    "insert_many duplicates >1 chunk": _insert_many_duplicates_large,
    "mark_published": _mark_published,
    "mark_published >1 chunk": _mark_published_large,
    "unpublished": _unpublished,
    "unpublished older_than": _unpublished_older,
    "get": _get,
    "api keys": _api_keys,
    "journal flush": _journal_flush,
    "journal prune": _journal_prune,
    "journal reads": _journal_reads,
    "query": _query(),
    "query desc": _query(order="desc"),
    "query user_id": _query(user_id="user_5"),
    "query user_id desc": _query(user_id="user_5", order="desc"),
    "query source": _query(source="stripe"),
    "query source desc": _query(source="stripe", order="desc"),
    "query event_name": _query(event_name="github.kind_3.done"),
    "query event_name desc": _query(event_name="github.kind_3.done", order="desc"),
    "query pattern prefix": _query(event_name="github.kind_1*"),
    "query pattern prefix desc": _query(event_name="github.kind_1*", order="desc"),
    "query pattern source-wide": _query(event_name="stripe.*"),
    "query pattern leading *": _query(event_name="*.kind_3.done"),
    "query pattern no match": _query(event_name="nothing.*"),
    "query user_id source": _query(user_id="user_5", source="github"),
    "query user_id source mismatch": _query(user_id="user_5", source="stripe"),
    "query user_id event_name mismatch": _query(user_id="user_5", event_name="stripe.kind_1.done"),
    "query user_id event_name": _query(user_id="user_5", event_name="github.kind_1.done"),
    "query user_id pattern": _query(user_id="user_5", event_name="github.*"),
    "query source event_name": _query(source="github", event_name="github.kind_3.done"),
    "query source event_name mismatch": _query(source="stripe", event_name="github.kind_3.done"),
    "query source pattern": _query(source="github", event_name="*.kind_2*"),
    "query all three": _query(user_id="user_5", source="github", event_name="github.kind_1.done"),
    "query since": _query(since=SINCE),
    "query since desc": _query(since=SINCE, order="desc"),
    "query until": _query(until=UNTIL),
    "query until desc": _query(until=UNTIL, order="desc"),
    "query window": _query(since=WINDOW[0], until=WINDOW[1]),
    "query window desc": _query(since=WINDOW[0], until=WINDOW[1], order="desc"),
    "query user_id since": _query(user_id="user_5", since=SINCE),
    "query source until": _query(source="stripe", until=UNTIL, order="desc"),
    "query event_name window": _query(
        event_name="github.kind_3.done", since=WINDOW[0], until=WINDOW[1]
    ),
    "query pattern since": _query(event_name="stripe.kind_1*", since=SINCE),
}


# -- the checks ----------------------------------------------------------------------


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def _sqlite_problems(path: str, sql: str, params: tuple[Any, ...]) -> list[str]:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        partial = {
            name
            for name, text in con.execute("SELECT name, sql FROM sqlite_master WHERE type='index'")
            if text and " WHERE " in text.upper()
        }
        listed = con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        tables = {name for (name,) in listed}
        plan = [row[3] for row in con.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        steps = _sqlite_steps(con, sql, params)
    finally:
        con.close()
    problems = []
    unfiltered_page = " WHERE " not in sql.upper() and " LIMIT " in sql.upper()
    accesses = []
    for line in plan:
        match = re.match(r"(SCAN|SEARCH) (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", line)
        if match is None or match.group(2) not in tables:
            if "AUTOMATIC" in line:
                problems.append(f"automatic index: {line}")
            continue
        kind, table, index = match.groups()
        accesses.append(kind)
        if kind == "SCAN" and index not in partial and not unfiltered_page:
            problems.append(f"reads {table} whole: {line}")
    if any("TEMP B-TREE" in line for line in plan) and "SCAN" in accesses:
        problems.append(f"sorts a whole table: {plan}")
    bound = MAX_STEPS + STEPS_PER_PARAMETER * len(params)
    if steps >= bound:
        problems.append(f"{steps} VM steps (>= {bound}): {plan}")
    return problems


def _sqlite_steps(con: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """Virtual-machine instructions the statement takes (a write is rolled back)."""
    ticks = 0

    def tick() -> int:
        nonlocal ticks
        ticks += 1
        return 0

    con.execute("BEGIN")
    try:
        con.set_progress_handler(tick, 100)
        # a plain INSERT the call made already fails its key check: its work up to it
        with contextlib.suppress(sqlite3.IntegrityError):
            con.execute(sql, params).fetchall()
    finally:
        con.set_progress_handler(None, 0)
        con.execute("ROLLBACK")
    return ticks * 100


async def _pg_problems(url: str, sql: str, params: tuple[Any, ...]) -> list[str]:
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(
        f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test",
        server_settings={"search_path": schema},
    )
    try:
        for name in ("json", "jsonb"):
            await conn.set_type_codec(
                name,
                encoder=lambda v: v if isinstance(v, str) else json.dumps(v),
                decoder=json.loads,
                schema="pg_catalog",
            )
        tx = conn.transaction()
        await tx.start()
        try:
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *params)
        except asyncpg.UniqueViolationError:  # a plain INSERT the call made already
            await tx.rollback()
            tx = conn.transaction()
            await tx.start()
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    plan = json.loads(raw)[0]["Plan"] if isinstance(raw, str) else raw[0]["Plan"]
    problems = []
    rows_read: dict[str, int] = {}
    for node in _nodes(plan):
        if node["Node Type"] == "Seq Scan":
            problems.append(f"Seq Scan on {node.get('Relation Name')}")
        relation = node.get("Relation Name")
        if relation is not None and "Scan" in node["Node Type"]:
            read = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            read += node.get("Rows Removed by Index Recheck", 0)
            rows_read[relation] = rows_read.get(relation, 0) + read * node.get("Actual Loops", 1)
    for relation, read in rows_read.items():
        if read >= MAX_ROWS:
            problems.append(f"reads {read} rows of {relation} (>= {MAX_ROWS})")
    if problems:
        problems.append(json.dumps(plan, indent=1)[:3000])
    return problems


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
async def test_every_statement_uses_an_index(
    recorded: tuple[Store, Recorder], filled_url: str, case: str
) -> None:
    store, recorder = recorded
    await CASES[case](store)
    assert recorder.statements, "the case ran no statement"
    problems: dict[str, list[str]] = {}
    for st in recorder.statements:
        if store.dialect == "sqlite":
            found = _sqlite_problems(_sqlite_path(filled_url), st.sql, st.params)
        else:
            found = await _pg_problems(filled_url, st.sql, st.params)
        if found and not _exempt(st.sql):
            problems[st.sql] = found
    assert not problems, "\n\n".join(f"{sql}\n  " + "\n  ".join(p) for sql, p in problems.items())


def _exempt(sql: str) -> bool:
    """``ApiKeyStore.list``: the whole table is its answer."""
    return bool(re.search(r"FROM api_keys ORDER BY", " ".join(sql.split())))


async def test_api_keys_list_is_the_only_exemption(recorded: tuple[Store, Recorder]) -> None:
    store, recorder = recorded
    await store.api_keys.list()
    assert [_exempt(st.sql) for st in recorder.statements] == [True]


def test_the_old_duplicate_lookup_was_a_scan(sqlite_filled: str) -> None:
    """What the check catches: the row-value IN the lookup used to be."""
    sql = "SELECT position FROM events WHERE (source, external_id) IN (VALUES (?, ?), (?, ?))"
    problems = _sqlite_problems(
        _sqlite_path(sqlite_filled), sql, ("github", "ext_1", "stripe", "ext_3")
    )
    assert any("reads events whole" in p for p in problems)
