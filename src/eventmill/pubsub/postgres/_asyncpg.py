"""The part of asyncpg the postgresql:// backend uses, as typed protocols.

asyncpg ships no type information, so every value it returns is ``Any`` to mypy;
the backend holds its connections and pools through these protocols instead, so a
wrong call is a type error. Row values stay ``Any``: their types are the SQL's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import asyncpg

__all__ = ["Connection", "Pool", "Record", "connect", "create_pool"]


class Record(Protocol):
    """A result row: by position or column name, and unpackable."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Transaction(Protocol):
    """``async with conn.transaction():`` commits on success, rolls back on error."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(self, *exc_info: object) -> bool | None: ...


class Connection(Protocol):
    """One server connection (pooled, or the dedicated LISTEN one)."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[Record]: ...

    async def fetchrow(self, query: str, *args: object) -> Record | None: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Iterable[Sequence[object]],
        columns: Sequence[str],
        schema_name: str,
    ) -> str: ...

    def transaction(self) -> Transaction: ...

    def is_in_transaction(self) -> bool: ...

    def is_closed(self) -> bool: ...

    def get_server_pid(self) -> int: ...

    def terminate(self) -> None: ...

    async def close(self) -> None: ...

    async def add_listener(
        self, channel: str, callback: Callable[[Connection, int, str, str], object]
    ) -> None: ...

    def add_termination_listener(self, callback: Callable[[Connection], object]) -> None: ...


class Acquiring(Protocol):
    """What ``pool.acquire()`` returns: awaitable, or an ``async with`` that releases."""

    def __await__(self) -> Generator[Any, None, Connection]: ...

    async def __aenter__(self) -> Connection: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class Pool(Protocol):
    """A connection pool."""

    def acquire(self) -> Acquiring: ...

    async def release(self, connection: Connection) -> None: ...

    def terminate(self) -> None: ...

    async def close(self) -> None: ...


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    reset: Callable[[Connection], Awaitable[None]],
    server_settings: Mapping[str, str] | None = None,
) -> Pool:
    """``asyncpg.create_pool``, typed."""
    pool: Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, reset=reset, server_settings=server_settings
    )
    return pool


async def connect(dsn: str) -> Connection:
    """``asyncpg.connect``, typed."""
    conn: Connection = await asyncpg.connect(dsn)
    return conn
