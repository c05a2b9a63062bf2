"""Publishing in the caller's transaction on sqlite:///.

See :mod:`eventmill.pubsub._transaction`.

The messages are inserted into the bus's tables by the caller's connection to the same
database file. SQLite has one writer at a time and the caller holds the write lock
from its first write to its commit, so ``seq`` order stays commit order: consumers read
the messages once the caller commits, as they read another process's publishes (at
their next poll, ``poll_interval``), and never a rolled-back one.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from eventmill.errors import PublishError
from eventmill.pubsub._transaction import failed, sqlalchemy_connection
from eventmill.pubsub.sqlite import _schema as sql
from eventmill.pubsub.sqlite._ops import Row

__all__ = ["publish_in"]

_SCHEME = "sqlite://"
_TAKES = (
    "a sqlite3 or aiosqlite connection, or a SQLAlchemy AsyncConnection or AsyncSession, "
    "on the bus's database file"
)
_HINT = "roll the transaction back"


async def publish_in(transaction: object, path: str, topic: str, rows: list[Row]) -> None:
    """Insert ``rows`` of ``topic`` through ``transaction``, a connection to the database
    file ``path``; they commit with the caller's transaction."""
    if isinstance(transaction, sqlite3.Connection):
        _check_file(_main_file(transaction.execute("PRAGMA database_list").fetchall()), path)
        if not _in_transaction(transaction):
            raise _not_in_transaction()
        try:
            transaction.execute(sql.INSERT_TOPIC, (topic,))
            transaction.executemany(sql.INSERT_MESSAGE, rows)
        except sqlite3.Error as exc:
            raise failed(_SCHEME, exc, _HINT) from exc
        return
    if type(transaction).__module__.startswith("aiosqlite"):
        import aiosqlite

        if isinstance(transaction, aiosqlite.Connection):
            async with transaction.execute("PRAGMA database_list") as cur:
                _check_file(_main_file(await cur.fetchall()), path)
            if not transaction.in_transaction and transaction.isolation_level is None:
                raise _not_in_transaction()
            try:
                await transaction.execute(sql.INSERT_TOPIC, (topic,))
                await transaction.executemany(sql.INSERT_MESSAGE, rows)
            except sqlite3.Error as exc:
                raise failed(_SCHEME, exc, _HINT) from exc
            return
    conn = await sqlalchemy_connection(transaction, _SCHEME, dialect="sqlite", takes=_TAKES)
    listed = await conn.exec_driver_sql("PRAGMA database_list")
    _check_file(_main_file(listed.fetchall()), path)
    try:  # the driver's own statements (qmark), as the bus's writer runs them
        await conn.exec_driver_sql(sql.INSERT_TOPIC, (topic,))
        await conn.exec_driver_sql(sql.INSERT_MESSAGE, rows)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise failed(_SCHEME, exc, _HINT) from exc


def _main_file(listed: Iterable[Sequence[Any]]) -> str:
    for _seq, name, file in listed:
        if name == "main":
            return str(file or "")
    return ""


def _check_file(file: str, path: str) -> None:
    """Refuse a connection to a database other than the bus's file (whose writes would
    commit, but never reach the bus's consumers)."""
    if not file or os.path.realpath(file) != os.path.realpath(path):
        raise PublishError(
            f"{_SCHEME} cannot publish in this transaction: its connection is to "
            f"{file or 'an in-memory database'!r}, not to the bus's database file {path!r}"
        )


def _in_transaction(conn: sqlite3.Connection) -> bool:
    """True if a write through ``conn`` joins a transaction the caller commits: one is open,
    or the ``sqlite3`` module opens one before the write (its default, legacy mode)."""
    if conn.in_transaction:
        return True
    autocommit = getattr(conn, "autocommit", None)  # Python 3.12+
    if autocommit is False:
        return True  # a transaction is always open in this mode
    if autocommit is True:
        return False
    return conn.isolation_level is not None


def _not_in_transaction() -> PublishError:
    return PublishError(
        f"{_SCHEME} publish(transaction=conn): conn is in autocommit mode and not in a "
        "transaction, so the message would commit apart from the caller's writes; "
        'execute "BEGIN" first'
    )
