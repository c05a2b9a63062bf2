"""Publishing in the caller's transaction (``publish(..., transaction=conn)``) on
postgresql:// and sqlite:///, with every kind of connection each takes.

The caller's own write (a row in an ``orders`` table on the bus's database) and the
message commit together or not at all: a commit publishes once, a rollback publishes
nothing, and a process killed before or right after its commit loses neither.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from eventmill import Message, PublishError, open_pubsub
from eventmill.pubsub.base import PubSub, Subscription
from tests.conftest import require_service
from tests.pubsub.conformance import collect, nothing_arrives

PG = "postgresql://postgres@127.0.0.1:5432/test"
CHILD = Path(__file__).with_name("_transaction_child.py")
QUIET = 0.5  # how long "nothing arrives" is watched for (seconds)


@dataclass
class Database:
    """The bus and, on the same database, the caller's ``orders`` table."""

    kind: str  # "postgresql" or "sqlite"
    bus_url: str
    orders: str  # the orders table's qualified name
    sqlalchemy_url: str
    path: str = ""  # sqlite: the database file

    async def order_exists(self, order_id: str) -> bool:
        if self.kind == "postgresql":
            conn = await asyncpg.connect(PG)
            try:
                found = await conn.fetchval(f"SELECT id FROM {self.orders} WHERE id = $1", order_id)
            finally:
                await conn.close()
            return found is not None
        with sqlite3.connect(self.path) as db:
            row = db.execute(f"SELECT id FROM {self.orders} WHERE id = ?", (order_id,)).fetchone()
        return row is not None


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    schema = f"emtx_{uuid.uuid4().hex[:10]}"

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(
        run(f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".orders (id text PRIMARY KEY)')
    )
    yield Database(
        "postgresql",
        f"{PG}?schema={schema}&poll_interval=30",  # only the commit's NOTIFY wakes consumers
        f'"{schema}".orders',
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )
    asyncio.run(run(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    path = str(tmp_path / "app.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    return Database(
        "sqlite",
        f"sqlite:///{path}?poll_interval=0.05",
        "orders",
        f"sqlite+aiosqlite:///{path}",
        path,
    )


@asynccontextmanager
async def consumer(db: Database) -> AsyncIterator[tuple[PubSub, Subscription]]:
    bus = await open_pubsub(db.bus_url)
    try:
        sub = await bus.subscribe("payments", group="ledger")
        yield bus, sub
    finally:
        await bus.close()


# -- one way to open a transaction per kind of connection ---------------------------------

#: (database kind, connection kind) -> a context manager yielding (connection, commit,
#: rollback, insert an order): the connection in an open transaction.
Opener = Callable[[Database], AbstractAsyncContextManager[Any]]


@dataclass
class Tx:
    conn: object
    insert: Callable[[str], Any]
    commit: Callable[[], Any]
    rollback: Callable[[], Any]


@asynccontextmanager
async def asyncpg_tx(db: Database) -> AsyncIterator[Tx]:
    conn = await asyncpg.connect(PG)
    tx = conn.transaction()
    await tx.start()

    async def insert(order_id: str) -> None:
        await conn.execute(f"INSERT INTO {db.orders} (id) VALUES ($1)", order_id)

    try:
        yield Tx(conn, insert, tx.commit, tx.rollback)
    finally:
        await conn.close()


@asynccontextmanager
async def pool_tx(db: Database) -> AsyncIterator[Tx]:
    async with asyncpg.create_pool(PG, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()

        async def insert(order_id: str) -> None:
            await conn.execute(f"INSERT INTO {db.orders} (id) VALUES ($1)", order_id)

        yield Tx(conn, insert, tx.commit, tx.rollback)  # the pool resets what is left open


@asynccontextmanager
async def sqlalchemy_tx(db: Database, *, session: bool = False) -> AsyncIterator[Tx]:
    """A SQLAlchemy ``AsyncConnection`` (or, with ``session``, an ``AsyncSession``)."""
    engine = create_async_engine(db.sqlalchemy_url)
    try:
        opened = AsyncSession(engine) if session else engine.connect()
        async with opened as conn:

            async def insert(order_id: str) -> None:
                await conn.execute(
                    text(f"INSERT INTO {db.orders} (id) VALUES (:id)"), {"id": order_id}
                )

            yield Tx(conn, insert, conn.commit, conn.rollback)
    finally:
        await engine.dispose()


session_tx = functools.partial(sqlalchemy_tx, session=True)


@asynccontextmanager
async def sqlite3_tx(db: Database) -> AsyncIterator[Tx]:
    conn = sqlite3.connect(db.path)

    async def insert(order_id: str) -> None:
        conn.execute(f"INSERT INTO {db.orders} (id) VALUES (?)", (order_id,))

    async def commit() -> None:
        conn.commit()

    async def rollback() -> None:
        conn.rollback()

    try:
        yield Tx(conn, insert, commit, rollback)
    finally:
        conn.close()


@asynccontextmanager
async def aiosqlite_tx(db: Database) -> AsyncIterator[Tx]:
    async with aiosqlite.connect(db.path) as conn:

        async def insert(order_id: str) -> None:
            await conn.execute(f"INSERT INTO {db.orders} (id) VALUES (?)", (order_id,))

        yield Tx(conn, insert, conn.commit, conn.rollback)


OPENERS: dict[str, tuple[str, Opener]] = {
    "postgresql-asyncpg": ("postgresql", asyncpg_tx),
    "postgresql-asyncpg-pool": ("postgresql", pool_tx),
    "postgresql-sqlalchemy": ("postgresql", sqlalchemy_tx),
    "postgresql-sqlalchemy-session": ("postgresql", session_tx),
    "sqlite-sqlite3": ("sqlite", sqlite3_tx),
    "sqlite-aiosqlite": ("sqlite", aiosqlite_tx),
    "sqlite-sqlalchemy": ("sqlite", sqlalchemy_tx),
    "sqlite-sqlalchemy-session": ("sqlite", session_tx),
}


@pytest.fixture(params=list(OPENERS))
def case(request: pytest.FixtureRequest) -> tuple[Database, Opener]:
    kind, opener = OPENERS[request.param]
    db = request.getfixturevalue("postgres_db" if kind == "postgresql" else "sqlite_db")
    return db, opener


def order_message(order_id: str) -> Message:
    return Message(b'{"amount": 4200}', {"event_name": "payment.processed"}, id=order_id)


# -- commit and rollback -------------------------------------------------------------------


async def test_a_commit_publishes_once_with_the_callers_write(
    case: tuple[Database, Opener],
) -> None:
    db, opener = case
    async with consumer(db) as (bus, sub), opener(db) as tx:
        await tx.insert("order-1")
        await bus.publish("payments", order_message("order-1"), transaction=tx.conn)  # type: ignore[call-arg]
        await nothing_arrives(sub, QUIET)  # not before the commit
        await tx.commit()
        (got,) = await collect(sub, 1)
        assert (got.id, got.metadata["event_name"]) == ("order-1", "payment.processed")
        await nothing_arrives(sub, QUIET)  # and once
    assert await db.order_exists("order-1")


async def test_a_rollback_publishes_nothing(case: tuple[Database, Opener]) -> None:
    db, opener = case
    async with consumer(db) as (bus, sub):
        async with opener(db) as tx:
            await tx.insert("order-2")
            await bus.publish("payments", order_message("order-2"), transaction=tx.conn)  # type: ignore[call-arg]
            await tx.rollback()
        # Both backends deliver in commit order: the next message published is the
        # first one the group gets, so the rolled-back one never comes.
        await bus.publish("payments", order_message("marker"))
        (got,) = await collect(sub, 1)
        assert got.id == "marker"
    assert not await db.order_exists("order-2")


async def test_messages_of_several_calls_in_one_transaction_arrive_in_order(
    case: tuple[Database, Opener],
) -> None:
    db, opener = case
    async with consumer(db) as (bus, sub), opener(db) as tx:
        await tx.insert("order-3")
        await bus.publish("payments", order_message("a"), order_message("b"), transaction=tx.conn)  # type: ignore[call-arg]
        await bus.publish("payments", order_message("c"), transaction=tx.conn)  # type: ignore[call-arg]
        await tx.commit()
        assert [m.id for m in await collect(sub, 3)] == ["a", "b", "c"]


# -- killed processes ----------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> Database:
    return request.getfixturevalue(
        f"{'postgres' if request.param == 'postgresql' else 'sqlite'}_db"
    )


def run_child_until_ready(db: Database, order_id: str, when: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), db.bus_url, db.orders, order_id, when],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # the child prints "ready" or dies
    assert line.strip() == "ready", f"child exited with {child.wait()}"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.stdout is not None
    child.stdout.close()


async def test_a_process_killed_before_its_commit_publishes_nothing_and_writes_nothing(
    db: Database,
) -> None:
    async with consumer(db) as (bus, sub):
        child = await asyncio.to_thread(run_child_until_ready, db, "order-4", "before-commit")
        kill(child)
        await bus.publish("payments", order_message("marker"))
        (got,) = await collect(sub, 1)
        assert got.id == "marker"
    assert not await db.order_exists("order-4")


async def test_a_process_killed_right_after_its_commit_loses_neither(db: Database) -> None:
    child = await asyncio.to_thread(run_child_until_ready, db, "order-5", "after-commit")
    kill(child)
    async with consumer(db) as (_bus, sub):
        (got,) = await collect(sub, 1)
        assert got.id == "order-5"
        await nothing_arrives(sub, QUIET)
    assert await db.order_exists("order-5")


# -- what is refused -----------------------------------------------------------------------


async def test_an_asyncpg_connection_outside_a_transaction_is_refused(
    postgres_db: Database,
) -> None:
    bus = await open_pubsub(postgres_db.bus_url)
    conn = await asyncpg.connect(PG)
    try:
        with pytest.raises(PublishError, match="not in a transaction"):
            await bus.publish("payments", order_message("x"), transaction=conn)  # type: ignore[call-arg]
        sub = await bus.subscribe("payments", group="ledger")
        await bus.publish("payments", order_message("marker"))
        assert [m.id for m in await collect(sub, 1)] == ["marker"]
    finally:
        await conn.close()
        await bus.close()


async def test_a_sqlite_connection_in_autocommit_mode_is_refused(sqlite_db: Database) -> None:
    bus = await open_pubsub(sqlite_db.bus_url)
    conn = sqlite3.connect(sqlite_db.path, isolation_level=None)
    try:
        with pytest.raises(PublishError, match="autocommit"):
            await bus.publish("payments", order_message("x"), transaction=conn)  # type: ignore[call-arg]
    finally:
        conn.close()
        await bus.close()


async def test_a_connection_to_another_database_file_is_refused(
    sqlite_db: Database, tmp_path: Path
) -> None:
    bus = await open_pubsub(sqlite_db.bus_url)
    other = sqlite3.connect(tmp_path / "other.db")
    try:
        with pytest.raises(PublishError, match="not to the bus's database file"):
            await bus.publish("payments", order_message("x"), transaction=other)  # type: ignore[call-arg]
        assert not other.in_transaction  # nothing was written through it
    finally:
        other.close()
        await bus.close()


async def test_a_sqlalchemy_connection_in_autocommit_mode_is_refused(postgres_db: Database) -> None:
    bus = await open_pubsub(postgres_db.bus_url)
    engine = create_async_engine(postgres_db.sqlalchemy_url)
    try:
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(PublishError, match="AUTOCOMMIT"):
                await bus.publish("payments", order_message("x"), transaction=auto)  # type: ignore[call-arg]
    finally:
        await engine.dispose()
        await bus.close()


async def test_a_transaction_of_another_kind_of_database_is_refused(
    postgres_db: Database, sqlite_db: Database
) -> None:
    bus = await open_pubsub(postgres_db.bus_url)
    engine = create_async_engine(sqlite_db.sqlalchemy_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(PublishError, match="sqlite database"):
                await bus.publish("payments", order_message("x"), transaction=conn)  # type: ignore[call-arg]
    finally:
        await engine.dispose()
        await bus.close()


async def test_an_object_that_is_no_connection_is_a_type_error(db: Database) -> None:
    bus = await open_pubsub(db.bus_url)
    try:
        with pytest.raises(TypeError, match=r"takes .* not str"):
            await bus.publish("payments", order_message("x"), transaction="BEGIN")  # type: ignore[call-arg]
    finally:
        await bus.close()


async def test_a_transaction_on_another_database_of_the_server_fails_clearly(
    postgres_db: Database,
) -> None:
    """A connection to the same server but another database (without the bus's tables):
    the insert fails with what to check, and the caller rolls back."""
    bus = await open_pubsub(postgres_db.bus_url)
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        tx = conn.transaction()
        await tx.start()
        with pytest.raises(PublishError, match="bus's database, whose schema"):
            await bus.publish("payments", order_message("x"), transaction=conn)  # type: ignore[call-arg]
        await tx.rollback()
    finally:
        await conn.close()
        await bus.close()


async def test_backends_without_transactions_say_so_in_their_capabilities() -> None:
    for url in ("memory://",):
        bus = await open_pubsub(url)
        try:
            assert bus.capabilities.transactions is False  # type: ignore[attr-defined]
            with pytest.raises(TypeError, match="transaction"):
                await bus.publish("t", Message(b"x"), transaction=object())  # type: ignore[call-arg]
        finally:
            await bus.close()
    from eventmill.pubsub.postgres import PostgresPubSub
    from eventmill.pubsub.sqlite import SQLitePubSub

    assert PostgresPubSub.capabilities.transactions
    assert SQLitePubSub.capabilities.transactions
