"""The :class:`Database`: engine, migrations, transactions, error translation.

Transactions:

* SQLite runs in WAL mode; write transactions start with ``BEGIN IMMEDIATE`` (so a
  writer never fails half-way on a lock upgrade) and are serialized in-process by an
  ``asyncio.Lock``; other processes wait up to ``busy_timeout_ms``. Readers run
  concurrently. ``:memory:`` databases use one connection and serialize everything.
* PostgreSQL runs at READ COMMITTED. Event inserts take a transaction-scoped advisory
  lock, so positions become visible in the order they were assigned: a reader paging by
  position never skips an event committed later with a smaller position.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolProxiedConnection, StaticPool
from sqlalchemy.util import await_only, greenlet_spawn

from eventmill._sqlite import (
    CHECKPOINT_EVERY,
    Checkpoints,
    checkpoint_file,
    connect_inline,
    is_locked,
)
from eventmill.store.config import StoreConfig
from eventmill.store.errors import StoreError, StoreUnavailableError

__all__ = ["CHECKPOINT_EVERY", "VERSION_TABLE", "Database", "advisory_key"]

VERSION_TABLE: Final = "eventmill_schema_version"
"""Alembic's version table (not ``alembic_version``, so an application's own Alembic
history can share the database)."""

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"

_WRITE_OPTION: Final = "eventmill_write"
_WAIT_OPTION: Final = "eventmill_lock_wait_ms"
_MIGRATION_WAIT_MS: Final = 120_000


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()


def advisory_key(*parts: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key derived from ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Database:
    """One open database: its engine, migrations, transactions and error translation.

    :class:`~eventmill.store.Store` adds the event and API key stores on top. Create
    it with :func:`~eventmill.store.open_store` (or ``await Store.open(url)``); close
    it with :meth:`close` or ``async with``. Every database error is translated:
    :class:`~eventmill.store.errors.StoreUnavailableError` when the database cannot be
    reached or is busy past its timeouts, :class:`~eventmill.store.errors.StoreError`
    otherwise.
    """

    def __init__(self, config: StoreConfig, engine: AsyncEngine) -> None:
        self.config = config
        self.engine = engine
        self._write_lock = asyncio.Lock() if config.dialect == "sqlite" else None
        self._writer: PoolProxiedConnection | None = None
        self._inline: sqlite3.Connection | None = None
        self._checkpoints = Checkpoints(self._copy_wal, self._writes_paused)
        self._queued = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._lost = False
        self.reconnects = 0
        """How often the database came back after a lost connection (a metric)."""
        self._closed = False

    @classmethod
    async def open(cls, url: str | StoreConfig) -> Self:
        """Connect, run pending migrations (idempotent, safe across processes) and return."""
        config = url if isinstance(url, StoreConfig) else StoreConfig.from_url(url)
        _check_sqlite_directory(config)
        store = cls(config, _create_engine(config))
        try:
            await store._migrate()
        except BaseException:
            await store.engine.dispose()
            raise
        return store

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.config.dialect

    async def close(self) -> None:
        """Close every pooled connection. Idempotent; later calls raise StoreError."""
        if self._closed:
            return
        self._closed = True
        await self._checkpoints.aclose()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._writer is not None:
            await self._drained.wait()
            writer, self._writer = self._writer, None
            with contextlib.suppress(Exception):
                await greenlet_spawn(writer.close)
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- transactions ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, write: bool, lock_wait_ms: int | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """Yield a connection inside a transaction; commit on success, roll back on error.

        ``write=True`` for transactions that modify data (see the module docstring).
        ``lock_wait_ms`` (SQLite) overrides ``busy_timeout_ms`` for this transaction.
        Database errors are translated to eventmill's store errors.
        """
        if self._closed:
            raise StoreError("the store is closed")
        serialize = self._write_lock is not None and (write or self.config.memory)
        lock = self._write_lock if serialize else None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if lock is not None:
                    await stack.enter_async_context(lock)
                    if write:
                        await self._drained.wait()  # statements queued by sqlite_write
                conn = await stack.enter_async_context(self.engine.connect())
                if self.config.dialect == "sqlite":
                    wait = self.config.busy_timeout_ms if lock_wait_ms is None else lock_wait_ms
                    conn = await conn.execution_options(
                        **{_WRITE_OPTION: write, _WAIT_OPTION: wait}
                    )
                await stack.enter_async_context(conn.begin())
                if self._lost:  # the database is back after a lost connection
                    self._lost = False
                    self.reconnects += 1
                yield conn
        except (TimeoutError, sa_exc.SQLAlchemyError, OSError) as exc:
            raise self.translate(exc) from exc

    async def sqlite_write(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """SQLite files only: run one writing statement in autocommit mode (it is its
        own transaction, committed when it completes); return the rows it returns (its
        ``RETURNING`` clause tells what it did).

        With ``synchronous=normal`` (the default) the statement runs on the event loop's
        thread, on a connection that never waits: its busy timeout is 0 and it never
        checkpoints (a commit then only appends to the WAL, no fsync); checkpoints run
        in a worker thread every :data:`CHECKPOINT_EVERY` statements
        (:class:`~eventmill._sqlite.Checkpoints`). A round trip to
        a driver thread costs more than such a statement whenever the CPUs are busy.
        If the database is locked by another process, or with ``synchronous=full``, the
        statement goes to the dedicated writer connection's thread instead (which waits
        up to ``busy_timeout_ms``); statements queued there run in call order without
        waiting for each other's answers. A :meth:`transaction` with ``write=True``
        waits until every queued statement is done, and statements wait for it: writers
        never meet at SQLite's file lock within this process. Errors are translated as
        in :meth:`transaction`.
        """
        if self._closed:
            raise StoreError("the store is closed")
        if self._write_lock is None or self.config.memory:
            raise StoreError("sqlite_write is only available on SQLite file stores")
        try:
            async with self._write_lock:
                inline = self._inline_connection()
                if inline is not None:
                    await self._drained.wait()
                    done = self._run_inline(inline, sql, args)
                    if done is not None:
                        return done
                driver = await self._writer_connection()
                self._queued += 1
                self._drained.clear()
                # The task starts on the next loop iteration, in creation order, and
                # queues the statement on the connection's thread (FIFO).
                pending = asyncio.ensure_future(driver.execute_fetchall(sql, list(args)))
            try:
                rows = await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._statement_done()
                else:  # cancelled caller: the statement still runs; count it when it ends
                    pending.add_done_callback(self._late_statement_done)
            return list(rows)
        except (TimeoutError, sa_exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise self.translate(exc) from exc

    def _inline_connection(self) -> sqlite3.Connection | None:
        if self.config.synchronous != "normal":
            return None
        if self._inline is None:  # the file is in WAL mode by now (migrations ran)
            self._inline = connect_inline(_sqlite_path(self.config), "PRAGMA foreign_keys = ON")
        return self._inline

    def _run_inline(
        self, con: sqlite3.Connection, sql: str, args: Sequence[Any]
    ) -> list[Any] | None:
        """Run the statement on ``con``; ``None`` if the database is locked (by another
        process: in-process writers hold the write lock)."""
        try:
            cursor = con.execute(sql, args)
            try:
                result = cursor.fetchall()
            finally:
                cursor.close()
        except sqlite3.OperationalError as exc:
            if is_locked(exc):
                return None
            raise
        self._checkpoints.committed()
        return result

    async def _copy_wal(self, final: bool) -> bool:
        """A step of :class:`~eventmill._sqlite.Checkpoints`, on a worker thread."""
        return await asyncio.to_thread(checkpoint_file, _sqlite_path(self.config), rewind=final)

    @contextlib.asynccontextmanager
    async def _writes_paused(self) -> AsyncIterator[None]:
        """No write in this process while inside: the write lock, and no statement
        queued on the writer thread."""
        assert self._write_lock is not None
        async with self._write_lock:
            await self._drained.wait()
            yield

    def _late_statement_done(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: its caller is gone
        self._statement_done()

    def _statement_done(self) -> None:
        self._queued -= 1
        if self._queued == 0:
            self._drained.set()

    async def _writer_connection(self) -> Any:
        """The dedicated writer connection (checked out of the pool on first use, under
        the write lock, kept until :meth:`close`); its driver (aiosqlite) connection."""
        if self._writer is None:
            raw = await self.engine.raw_connection()
            wait = self.config.busy_timeout_ms
            if raw.info.get(_WAIT_OPTION) != wait:
                driver: Any = raw.driver_connection
                await driver.execute_fetchall(f"PRAGMA busy_timeout = {int(wait)}")
                raw.info[_WAIT_OPTION] = wait
            self._writer = raw
        return self._writer.driver_connection

    def translate(self, exc: BaseException) -> StoreError:
        """Map a driver/SQLAlchemy error to StoreUnavailableError or StoreError (no secrets)."""
        orig = getattr(exc, "orig", None) or exc
        kind = type(orig).__name__
        where = self.config.dialect
        if _unavailable(exc, orig, self.config.dialect):
            if not isinstance(orig, sqlite3.OperationalError):  # not a busy SQLite file
                self._lost = True
            return StoreUnavailableError(f"store database ({where}) is unavailable: {kind}")
        return StoreError(f"store database ({where}) error: {kind}")

    # -- migrations -----------------------------------------------------------------

    async def _migrate(self) -> None:
        # Several processes may start at once: the first migrates, the others wait.
        async with self.transaction(write=True, lock_wait_ms=_MIGRATION_WAIT_MS) as conn:
            if self.config.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"),
                    {"k": advisory_key("eventmill-migrate", self.config.schema or "")},
                )
                if self.config.schema is not None:
                    # the name is validated by StoreConfig (lowercase identifier)
                    await conn.execute(
                        sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.config.schema}"')
                    )
                    await conn.execute(sa.text(f'SET LOCAL search_path TO "{self.config.schema}"'))
            await conn.run_sync(_upgrade)


_SQLITE_UNAVAILABLE: Final = (
    "locked",
    "busy",
    "unable to open",
    "disk i/o",
    "readonly database",
    "disk is full",
)


def _unavailable(exc: BaseException, orig: BaseException, dialect: str) -> bool:
    """Whether an error means "the database cannot serve us now" (vs. a bad statement)."""
    if isinstance(exc, TimeoutError | OSError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(orig, OSError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if dialect == "sqlite":
        if isinstance(exc, sa_exc.OperationalError | sqlite3.OperationalError):
            text = str(orig).lower()
            return any(marker in text for marker in _SQLITE_UNAVAILABLE)
        return False
    if isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError):
        return True
    kind_name = type(orig).__name__.lower()
    return "connection" in kind_name or "cannotconnect" in kind_name


def _upgrade(sync_conn: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _sqlite_path(config: StoreConfig) -> str:
    return config.url.split(":///", 1)[1].split("?", 1)[0]


def _check_sqlite_directory(config: StoreConfig) -> None:
    """Fail early, and clearly, when a SQLite file's directory does not exist."""
    if config.dialect != "sqlite" or config.memory:
        return
    path = Path(_sqlite_path(config))
    if not path.parent.is_dir():
        raise StoreUnavailableError(
            f"cannot open the SQLite store: directory {str(path.parent)!r} does not exist"
        )


def _create_engine(config: StoreConfig) -> AsyncEngine:
    kwargs: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "json_deserializer": orjson.loads,
    }
    if config.dialect == "postgresql":
        kwargs.update(
            pool_size=config.pool_size, max_overflow=0, pool_pre_ping=True, pool_timeout=30
        )
        connect_args: dict[str, Any] = {"timeout": 10}
        if config.schema is not None:
            connect_args["server_settings"] = {"search_path": config.schema}
        kwargs["connect_args"] = connect_args
    elif config.memory:
        kwargs.update(poolclass=StaticPool)
    else:
        kwargs.update(pool_size=config.pool_size, max_overflow=0, pool_timeout=30)
    engine = create_async_engine(config.url, **kwargs)
    if config.dialect == "sqlite":
        _configure_sqlite(engine, config)
    return engine


def apply_pragmas(
    con: Any,
    pragmas: Sequence[str],
    wait_ms: float,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Run ``pragmas`` on a new SQLite connection (a DB-API one), retrying while the
    database is locked, for up to ``wait_ms`` (``sleep`` waits between tries).

    Switching a fresh file to WAL needs an exclusive lock, and SQLite can answer
    "database is locked" at once, without its busy handler, while another connection
    opens or initializes the same file; several processes (or stores) opening one
    new database at the same time hit that window. ``journal_mode = WAL`` is only
    asked for when the file is not in WAL mode already.
    """
    deadline = time.monotonic() + wait_ms / 1000
    delay = 0.005
    while True:
        cursor = con.cursor()
        try:
            for pragma in pragmas:
                if pragma == "PRAGMA journal_mode = WAL":
                    cursor.execute("PRAGMA journal_mode")
                    mode = cursor.fetchone()
                    if mode is not None and str(mode[0]).lower() == "wal":
                        continue
                cursor.execute(pragma)
            return
        except Exception as exc:  # the DB-API's OperationalError, whichever module
            text = str(exc).lower()
            locked = "locked" in text or "busy" in text
            if not locked or time.monotonic() + delay > deadline:
                raise
        finally:
            cursor.close()
        sleep(delay)
        delay = min(delay * 2, 0.1)


def _configure_sqlite(engine: AsyncEngine, config: StoreConfig) -> None:
    pragmas = [
        f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}",
        "PRAGMA foreign_keys = ON",
    ]
    if not config.memory:
        pragmas += [
            "PRAGMA journal_mode = WAL",
            f"PRAGMA synchronous = {config.synchronous.upper()}",
        ]

    @sa_event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Take over transaction control from the sqlite3 module (see _on_begin).
        dbapi_conn.isolation_level = None
        # Runs in SQLAlchemy's greenlet on the event loop: wait without blocking it.
        apply_pragmas(
            dbapi_conn,
            pragmas,
            config.busy_timeout_ms,
            lambda seconds: await_only(asyncio.sleep(seconds)),
        )
        record.info[_WAIT_OPTION] = config.busy_timeout_ms

    @sa_event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        wait = options.get(_WAIT_OPTION)
        info = conn.connection.info
        if wait is not None and info.get(_WAIT_OPTION) != wait:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(wait)}")
            info[_WAIT_OPTION] = wait
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION) else "BEGIN")
