"""What realtime reads from the store: events after a position, in position order.

The hub follows the store: it reads every event past the last position it handed out
(woken by the bus), so one order, the store's, is what every client and every resume
sees. These reads go straight to the store's ``events`` table (read-only) and return
each event as its JSON text, built once and shared by every connection it goes to:
the stored payload and metadata are used as the JSON text they are stored as, never
parsed and serialized again.

Positions are visible in the order they were assigned (the store serializes event
inserts; see :mod:`eventmill.store.database`), so a reader paging by position never
skips an event committed later with a smaller position.

On a SQLite file the hub's reads (:meth:`Feed.after`, :meth:`Feed.head`,
:meth:`Feed.oldest`: a range of the primary key, at most ``read_batch`` rows) run on the
event loop's thread, on a read-only connection of their own (the standard library's
``sqlite3``) that never waits for a lock (WAL readers do not wait for writers): a
hand-off to the driver's thread and back costs more than such a read, about 1.5 µs an
event (2 cores, Intel Xeon; 4 through SQLAlchemy's result rows). Its rows are the
same columns as the pool's; times come as the text SQLAlchemy stored and are written
as orjson writes the ``datetime`` the pool's rows hold, so both give the same JSON.
Should SQLite report the file busy, the read goes through the store's pool instead.
Reads for one client (a resume, which may scan) always go through the pool.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import orjson
import sqlalchemy as sa

from eventmill._sqlite import connect_inline, is_locked
from eventmill.realtime.frames import text_frame
from eventmill.store import Store
from eventmill.store.tables import events as t

__all__ = ["Feed", "FeedEvent", "name_condition"]

_log = logging.getLogger("eventmill.realtime")

_COLUMNS: Final = (
    t.c.position,
    t.c.id,
    t.c.event_name,
    t.c.source,
    t.c.user_id,
    # the JSON as stored, as text (PostgreSQL's json keeps the text as inserted)
    sa.cast(t.c.payload, sa.Text).label("payload"),
    sa.cast(t.c["metadata"], sa.Text).label("metadata"),
    t.c.created_at,
    t.c.processed_at,
)


def _one_line(text: str) -> str:
    """JSON text without line breaks (stored JSON is compact; this is a safeguard for
    SSE, where a line break would end the ``data:`` field)."""
    if "\n" in text or "\r" in text:
        return orjson.dumps(orjson.loads(text)).decode()
    return text


_DUMPS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
"""Times as :meth:`Event.to_json` writes them (SQLite returns them without a zone: UTC)."""


def _time(value: str | None) -> Any:
    """A time SQLite's own driver read (the text SQLAlchemy stored, UTC without a zone:
    ``2026-12-06 10:00:00.250000``) as :meth:`Event.to_json` writes it
    (``2026-12-06T10:00:00.250000Z``; orjson writes no fraction when it is zero)."""
    if value is None:
        return None
    if len(value) == 26 and value[10] == " " and value[19] == ".":
        if value.endswith(".000000"):
            return f"{value[:10]}T{value[11:19]}Z"
        return f"{value[:10]}T{value[11:]}Z"
    return datetime.fromisoformat(value)  # stored some other way: orjson writes it


def _body(row: Sequence[Any]) -> bytes:
    """The event's JSON (UTF-8) from its stored row."""
    (_, event_id, name, source, user_id, payload, metadata, created, processed) = row
    if type(created) is str:  # read by the standard library's driver (SQLite)
        created, processed = _time(created), _time(processed)
    body = {
        "id": event_id,
        "event_name": name,
        "source": source,
        "user_id": user_id,
        "payload": orjson.Fragment(_one_line(payload)),
        "metadata": orjson.Fragment(_one_line(metadata)),
        "created_at": created,
        "processed_at": processed,
    }
    return orjson.dumps(body, option=_DUMPS)


class FeedEvent:
    """One stored event as realtime sends it: its position, what routing needs, and its
    JSON form (the same as :meth:`eventmill.events.Event.to_json`), built the first
    time it is asked for: an event no connection of this node wants is never
    serialized. Each form of it a transport writes is built once, for every
    connection it goes to."""

    __slots__ = (
        "_body",
        "_row",
        "_sse",
        "_wire",
        "_ws",
        "event_name",
        "id",
        "position",
        "user_id",
    )

    def __init__(
        self,
        position: int,
        id: str,
        event_name: str,
        user_id: str | None,
        json: str | None = None,
        *,
        row: Sequence[Any] | None = None,
    ) -> None:
        if json is None and row is None:
            raise ValueError("a FeedEvent needs its JSON text or its stored row")
        self.position = position
        self.id = id
        self.event_name = event_name
        self.user_id = user_id
        self._body = None if json is None else json.encode()
        self._row = row
        self._ws: str | None = None
        self._wire: bytes | None = None
        self._sse: bytes | None = None

    def __repr__(self) -> str:
        return f"FeedEvent(position={self.position}, id={self.id!r}, name={self.event_name!r})"

    def body(self) -> bytes:
        """The event's JSON, UTF-8."""
        body = self._body
        if body is None:
            assert self._row is not None
            body = self._body = _body(self._row)
            self._row = None
        return body

    @property
    def json(self) -> str:
        """The event's JSON text."""
        return self.body().decode()

    def _message(self) -> bytes:
        return b'{"type":"event","position":%d,"payload":%b}' % (self.position, self.body())

    def ws_frame(self) -> str:
        """The WebSocket message: ``{"type": "event", "position": …, "payload": <event>}``."""
        if self._ws is None:
            self._ws = self._message().decode()
        return self._ws

    def ws_wire(self) -> bytes:
        """The WebSocket message as a whole frame on the wire
        (:func:`eventmill.realtime.frames.text_frame`)."""
        if self._wire is None:
            self._wire = text_frame(self._message())
        return self._wire

    def sse_frame(self) -> bytes:
        """The SSE event: ``id:`` the position, ``event:`` the name, ``data:`` the event."""
        if self._sse is None:
            self._sse = b"id: %d\nevent: %b\ndata: %b\n\n" % (
                self.position,
                self.event_name.encode(),
                self.body(),
            )
        return self._sse


def _event(row: Sequence[Any]) -> FeedEvent:
    return FeedEvent(int(row[0]), row[1], row[2], row[4], row=row)


def name_condition(patterns: Sequence[str] | None, dialect: str) -> sa.ColumnElement[bool] | None:
    """SQL matching any of ``patterns`` (``*`` = any run of characters; validated by the
    caller), or ``None`` when every name matches."""
    if patterns is None or "*" in patterns:
        return None
    if not patterns:
        return sa.false()
    conditions: list[sa.ColumnElement[bool]] = []
    for pattern in patterns:
        if "*" not in pattern:
            conditions.append(t.c.event_name == pattern)
        elif dialect == "sqlite":
            conditions.append(t.c.event_name.op("GLOB")(pattern))
        else:
            escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(t.c.event_name.like(escaped.replace("*", "%"), escape="\\"))
    return sa.or_(*conditions)


class _InlineReader:
    """A read-only connection to a SQLite file (the standard library's driver, not
    SQLAlchemy: a row costs about 1.5 µs instead of 4), used on the event loop's
    thread: it never waits for a lock (busy timeout 0) and cannot write
    (``query_only``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def rows(self, sql: str, params: tuple[int, ...] = ()) -> list[Any] | None:
        """The rows ``sql`` selects, or ``None`` when the read cannot be made here (the
        file is busy, or the connection failed: it is opened again next time)."""
        try:
            conn = self.conn
            if conn is None:
                conn = self.conn = connect_inline(self.path, "PRAGMA query_only = ON")
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if not is_locked(exc):
                _log.warning("realtime: a read on the event loop failed (%s); retrying", exc)
                self.close()
            return None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


_NAMES: Final = ", ".join(c.name for c in _COLUMNS)
_HEAD_SQL: Final = f"SELECT max(position) FROM {t.name}"
_OLDEST_SQL: Final = f"SELECT min(position) FROM {t.name}"
_AFTER_SQL: Final = f"SELECT {_NAMES} FROM {t.name} WHERE position > ? ORDER BY position LIMIT ?"
"""The hub's reads as SQL for the inline connection (the columns of :data:`_COLUMNS`;
SQLite returns the JSON columns as their text and times as SQLAlchemy stored them)."""


class Feed:
    """Reads of the store's events for realtime (read-only, bounded). :meth:`close`
    closes the connection the hub's reads use on a SQLite file."""

    def __init__(self, store: Store) -> None:
        self.store = store
        path = None
        if store.dialect == "sqlite" and not store.config.memory:
            path = store.engine.url.database
        self._inline = _InlineReader(path) if path else None

    def close(self) -> None:
        """Close the event loop's connection (a later read opens it again)."""
        if self._inline is not None:
            self._inline.close()

    async def _rows(
        self, stmt: sa.Select[Any], sql: str, params: tuple[int, ...] = ()
    ) -> Sequence[Sequence[Any]]:
        """A bounded read of the hub's: on the event loop where it can be (``sql``),
        else through the store's pool (``stmt``, the same read)."""
        if self._inline is not None:
            inline = self._inline.rows(sql, params)
            if inline is not None:
                return inline
        async with self.store.transaction(write=False) as conn:
            rows: Sequence[sa.Row[Any]] = (await conn.execute(stmt)).all()
        return rows

    async def head(self) -> int:
        """The newest position stored (0 when the store is empty)."""
        rows = await self._rows(sa.select(sa.func.max(t.c.position)), _HEAD_SQL)
        return int(rows[0][0] or 0)

    async def oldest(self) -> int | None:
        """The oldest position still stored (``None`` when the store is empty)."""
        rows = await self._rows(sa.select(sa.func.min(t.c.position)), _OLDEST_SQL)
        value = rows[0][0]
        return None if value is None else int(value)

    async def after(self, position: int, limit: int) -> list[FeedEvent]:
        """Up to ``limit`` events after ``position``, in position order (the hub's read)."""
        stmt = (
            sa.select(*_COLUMNS).where(t.c.position > position).order_by(t.c.position).limit(limit)
        )
        rows = await self._rows(stmt, _AFTER_SQL, (position, limit))
        return [_event(r) for r in rows]

    def _client_conditions(
        self, after: int, user_id: str | None, patterns: Sequence[str] | None
    ) -> list[sa.ColumnElement[bool]]:
        conditions: list[sa.ColumnElement[bool]] = [t.c.position > after]
        if user_id is not None:
            conditions.append(t.c.user_id == user_id)
        names = name_condition(patterns, self.store.dialect)
        if names is not None:
            conditions.append(names)
        return conditions

    async def for_client(
        self,
        after: int,
        upto: int,
        *,
        user_id: str | None,
        patterns: Sequence[str] | None,
        limit: int,
    ) -> list[FeedEvent]:
        """Up to ``limit`` events in ``(after, upto]`` for one client, in position order:
        ``user_id``'s (every user's when ``None``), named by one of ``patterns``."""
        conditions = self._client_conditions(after, user_id, patterns)
        conditions.append(t.c.position <= upto)
        stmt = sa.select(*_COLUMNS).where(*conditions).order_by(t.c.position).limit(limit)
        async with self.store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_event(r) for r in rows]

    async def count_for_client(
        self, after: int, *, user_id: str | None, patterns: Sequence[str] | None, cap: int
    ) -> int:
        """How many events after ``after`` one client would get, counting at most
        ``cap + 1`` (so the count stays cheap however many there are)."""
        conditions = self._client_conditions(after, user_id, patterns)
        inner = sa.select(t.c.position).where(*conditions).limit(cap + 1).subquery()
        async with self.store.transaction(write=False) as conn:
            value = (await conn.execute(sa.select(sa.func.count()).select_from(inner))).scalar()
        return int(value or 0)
