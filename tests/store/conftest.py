"""Store fixtures: every store test runs against SQLite (temp file) and PostgreSQL.

PostgreSQL tests use a fresh schema ``em_test_<uuid>`` in database ``test`` (dropped at
teardown), so parallel runs never share tables.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from eventmill.store import Store, open_store
from tests.conftest import require_service

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_BASE = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test")
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL store URL with a schema of its own, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    schema = f"em_test_{uuid.uuid4().hex[:16]}"
    yield f"{PG_BASE}?schema={schema}"
    asyncio.run(drop_schema(schema))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty store on each backend."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()
