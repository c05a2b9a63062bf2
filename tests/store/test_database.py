"""Store lifecycle: migrations, URL handling, error translation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from eventmill.errors import ConfigurationError
from eventmill.events import Event
from eventmill.store import Store, StoreConfig, open_store
from eventmill.store.database import VERSION_TABLE
from eventmill.store.errors import StoreError, StoreUnavailableError
from tests.conftest import free_port
from tests.store.conftest import PG_BASE


async def _tables(store: Store) -> set[str]:
    async with store.transaction(write=False) as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    return set(names)


def _head() -> str:
    """The newest migration, read from the migration scripts themselves."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from eventmill.store.database import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def _version(store: Store) -> list[str]:
    async with store.transaction(write=False) as conn:
        rows = (await conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
    return [r[0] for r in rows]


async def test_fresh_database_is_migrated_to_head(store_url: str) -> None:
    async with await open_store(store_url) as store:
        assert {"events", "api_keys", VERSION_TABLE} <= await _tables(store)
        assert await _version(store) == [_head()]


async def test_reopening_a_migrated_database_keeps_data(store_url: str) -> None:
    event = Event(event_name="user.created", user_id="u1")
    async with await open_store(store_url) as store:
        await store.events.insert(event, "k1")
    async with await open_store(store_url) as store:
        assert await _version(store) == [_head()]
        got = await store.events.get(event.id)
        assert got is not None
        assert got.event == event


async def _migrate(store: Store, target: str, *, down: bool = False) -> None:
    """Run Alembic to ``target`` on the store's database, as ``open_store`` does."""
    from alembic import command
    from alembic.config import Config

    from eventmill.store.database import MIGRATIONS_DIR

    def run(sync_conn: sa.Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["connection"] = sync_conn
        (command.downgrade if down else command.upgrade)(cfg, target)

    async with store.transaction(write=True) as conn:
        await conn.run_sync(run)


async def _indexes(store: Store) -> set[str]:
    async with store.transaction(write=False) as conn:
        found = await conn.run_sync(lambda c: sa.inspect(c).get_indexes("events"))
    return {index["name"] for index in found if index["name"]}


async def test_a_database_before_the_query_indexes_is_upgraded_with_its_events(
    store_url: str,
) -> None:
    async with await open_store(store_url) as store:
        await _migrate(store, "0005", down=True)
        assert await _version(store) == ["0005"]
        assert "ix_events_source_event_name_position" not in await _indexes(store)
        event = Event(event_name="razorpay.payment.captured", source="razorpay", user_id="u1")
        await store.events.insert(event, "pay_1")
    async with await open_store(store_url) as store:
        assert await _version(store) == [_head()]  # 0006 and every later one
        assert "ix_events_source_event_name_position" in await _indexes(store)
        page = await store.events.query(source="razorpay", event_name="razorpay.payment.*")
        assert [s.event for s in page.events] == [event]


async def test_many_concurrent_opens_of_fresh_sqlite_files_all_succeed(tmp_path: Path) -> None:
    """Opening one new file from many stores at once hits SQLite's WAL-switch window,
    where "database is locked" comes back without the busy handler: 20 rounds of 6."""
    for round_ in range(20):
        url = f"sqlite:///{tmp_path / f'fresh{round_}.db'}"
        stores = await asyncio.gather(*(open_store(url) for _ in range(6)))
        for store in stores:
            await store.close()


async def test_concurrent_opens_of_a_fresh_database_all_succeed(store_url: str) -> None:
    stores = await asyncio.gather(*(open_store(store_url) for _ in range(3)))
    try:
        for store in stores:
            assert await _version(store) == [_head()]
    finally:
        for store in stores:
            await store.close()


async def test_unreachable_postgresql_raises_store_unavailable() -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"
    with pytest.raises(StoreUnavailableError) as info:
        await open_store(url)
    assert "hunter2" not in str(info.value)


async def test_unopenable_sqlite_file_raises_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError):
        await open_store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


async def test_postgresql_store_survives_its_connections_being_killed(pg_url: str) -> None:
    async with await open_store(f"{pg_url}&pool_size=2") as store:
        await store.events.insert(Event(event_name="a.b"), "k1")
        pids = set()
        for _ in range(4):
            async with store.transaction(write=False) as conn:
                pids.add((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())
        admin = await asyncpg.connect(PG_BASE)
        try:
            for pid in pids:
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # pooled connections are checked before use and replaced when dead
        page = await store.events.query()
        assert len(page.events) == 1


async def test_memory_sqlite_store_works(tmp_path: Path) -> None:
    async with await open_store("sqlite:///:memory:") as store:
        events = [Event(event_name="a.b") for _ in range(5)]
        results = await asyncio.gather(*(store.events.insert(e, "same") for e in events))
        assert sum(created for _, created in results) == 1
        assert len((await store.events.query()).events) == 1


def test_store_config_parses_urls() -> None:
    c = StoreConfig.from_url("sqlite:///rel/path.db")
    assert c.url == "sqlite+aiosqlite:///rel/path.db"
    assert c.dialect == "sqlite"
    assert not c.memory
    c = StoreConfig.from_url("sqlite:////abs/path.db?synchronous=full&busy_timeout_ms=100")
    assert c.url == "sqlite+aiosqlite:////abs/path.db"
    assert (c.synchronous, c.busy_timeout_ms) == ("full", 100)
    assert StoreConfig.from_url("sqlite:///:memory:").memory
    c = StoreConfig.from_url("postgresql://u:secret@h:5433/db?schema=ev&pool_size=3&ssl=disable")
    assert c.url == "postgresql+asyncpg://u:secret@h:5433/db?ssl=disable"
    assert (c.dialect, c.schema, c.pool_size) == ("postgresql", "ev", 3)
    assert c.redacted() == "postgresql+asyncpg://u:***@h:5433/db?ssl=disable"
    assert StoreConfig.from_url("postgres://h/db").dialect == "postgresql"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://h/db",
        "nonsense",
        "sqlite:///x.db?schema=s",
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?pool_size=0",
        "postgresql://h/db?pool_size=x",
        "sqlite:///x.db?synchronous=off",
    ],
)
def test_store_config_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        StoreConfig.from_url(url)


class BoomError(Exception):
    pass


async def _insert_then_fail(store: Store) -> None:
    async with store.transaction(write=True) as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, prefix, hash, scopes, created_at) "
                "VALUES ('x', 'n', 'p', 'h', '[]', CURRENT_TIMESTAMP)"
            )
        )
        raise BoomError


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(BoomError):
        await _insert_then_fail(store)
    assert await store.api_keys.get("x") is None


async def test_sql_errors_are_translated(store: Store) -> None:
    async def bad_query() -> None:
        async with store.transaction(write=False) as conn:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(StoreError) as info:
        await bad_query()
    assert not isinstance(info.value, StoreUnavailableError)


async def test_sqlite_write_lock_held_elsewhere_is_unavailable_until_released(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "locked.db"
    async with await open_store(f"sqlite:///{path}?busy_timeout_ms=50") as store:
        other = sqlite3.connect(path, isolation_level=None)  # another process, in effect
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError, match="OperationalError"):
                await store.events.insert(Event(event_name="a.b"), "k1")
            assert (await store.events.query()).events == []  # readers are not blocked
        finally:
            other.execute("ROLLBACK")
            other.close()
        _, created = await store.events.insert(Event(event_name="a.b"), "k1")
        assert created


async def test_a_lost_database_that_comes_back_counts_one_reconnect(tmp_path: Path) -> None:
    async with await open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        assert store.reconnects == 0
        lost = store.translate(ConnectionResetError("the server went away"))
        assert isinstance(lost, StoreUnavailableError)
        busy = store.translate(__import__("sqlite3").OperationalError("database is locked"))
        assert isinstance(busy, StoreUnavailableError)  # busy, not lost
        async with store.transaction(write=False):
            pass
        async with store.transaction(write=False):
            pass
        assert store.reconnects == 1
