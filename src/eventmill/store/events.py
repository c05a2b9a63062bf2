"""The event store: deduplicated inserts, the outbox, lookups and cursor-paged queries."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from eventmill.errors import ConfigurationError, EventValidationError
from eventmill.events.envelope import Event
from eventmill.events.registry import validate_pattern
from eventmill.store.database import advisory_key
from eventmill.store.errors import (
    DuplicateEventError,
    InvalidCursorError,
    StoreError,
)
from eventmill.store.tables import events as t

if TYPE_CHECKING:
    from eventmill.store.database import Database

__all__ = ["EventPage", "EventStore", "StoredEvent", "check_external_id"]

MAX_LIMIT: Final = 1000
_ID_CHUNK: Final = 500
_COLUMNS = (
    t.c.position,
    t.c.id,
    t.c.source,
    t.c.external_id,
    t.c.event_name,
    t.c.user_id,
    t.c.payload,
    t.c["metadata"],
    t.c.created_at,
    t.c.processed_at,
    t.c.stored_at,
    t.c.published_at,
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def encode_cursor(position: int, order: Literal["asc", "desc"] = "asc") -> str:
    """Return the opaque cursor for "after ``position``" in ``order``."""
    raw = f"v1:{order[0]}:{position}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, order: Literal["asc", "desc"] = "asc") -> int:
    """Return the position in ``cursor``; raise InvalidCursorError if malformed or for
    the other order."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, direction, position = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode().split(":")
        )
        value = int(position)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidCursorError("malformed cursor") from None
    if version != "v1" or direction not in ("a", "d") or value < 0:
        raise InvalidCursorError("malformed cursor")
    if direction != order[0]:
        raise InvalidCursorError(
            f"cursor was made for order={'asc' if direction == 'a' else 'desc'}"
        )
    return value


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored, with its place in the store."""

    event: Event
    """The event."""
    position: int
    """Its position: unique and increasing in insertion order (with gaps)."""
    external_id: str | None
    """The provider's id it was deduplicated on (``None`` for events stored by id only)."""
    stored_at: datetime
    """When it was stored (UTC)."""
    published_at: datetime | None
    """When it was published to the bus, or ``None`` while it waits in the outbox."""

    @property
    def id(self) -> str:
        """The event id."""
        return self.event.id

    @property
    def cursor(self) -> str:
        """Opaque ascending cursor pointing just after this event."""
        return encode_cursor(self.position, "asc")


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of a query."""

    events: list[StoredEvent]
    """The events, in the query's order."""
    next_cursor: str | None
    """Cursor after the last event returned (the ``after`` given, when the page is empty):
    pass it as ``after`` to continue or to tail. ``None`` only for an empty first page."""
    has_more: bool
    """Whether more matching events existed when the page was read."""


def check_external_id(external_id: str | None) -> None:
    """Raise :class:`~eventmill.store.errors.StoreError` unless ``external_id`` is ``None`` or 1-256
    characters (what :meth:`EventStore.insert` and :meth:`EventStore.insert_many` accept)."""
    if external_id is not None and not (0 < len(external_id) <= 256):
        raise StoreError("external_id must be 1-256 characters")


def _values(
    event: Event, external_id: str | None, now: datetime, published: bool
) -> dict[str, Any]:
    check_external_id(external_id)
    return {
        "id": event.id,
        "source": event.source,
        "external_id": external_id,
        "event_name": event.event_name,
        "user_id": event.user_id,
        "payload": event.payload,
        "metadata": event.to_dict()["metadata"],  # = metadata.model_dump(mode="json")
        "created_at": event.created_at,
        "processed_at": event.processed_at,
        "stored_at": now,
        "published_at": now if published else None,
    }


_INSERT_COLUMNS: Final = (
    "id",
    "source",
    "external_id",
    "event_name",
    "user_id",
    "payload",
    "metadata",
    "created_at",
    "processed_at",
    "stored_at",
    "published_at",
)


class _SqliteFastPath:
    """Driver-level SQL for SQLite's one-statement writes, with each value converted by
    its column type's own bind processor (what SQLAlchemy would send). Statements are
    cached per row count."""

    def __init__(self, store: Database) -> None:
        dialect = store.engine.sync_engine.dialect
        processors = []
        for name in _INSERT_COLUMNS:
            column_type = t.c[name].type
            processors.append(column_type.dialect_impl(dialect).bind_processor(dialect))
        self._processors = tuple(processors)
        self._insert_sql: dict[int, str] = {}
        names = ", ".join(f'"{name}"' for name in _INSERT_COLUMNS)
        self._insert_head = f'INSERT INTO "{t.name}" ({names}) VALUES '
        self._row = "(" + ", ".join("?" * len(_INSERT_COLUMNS)) + ")"

    def insert(self, params: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        """The statement inserting ``params`` (``_values`` dicts) and its arguments."""
        sql = self._insert_sql.get(len(params))
        if sql is None:
            rows = ", ".join([self._row] * len(params))
            sql = (
                f"{self._insert_head}{rows} ON CONFLICT DO NOTHING "
                "RETURNING id, position, source, external_id"
            )
            if len(self._insert_sql) < 64:
                self._insert_sql[len(params)] = sql
        args: list[Any] = []
        for values in params:
            for name, process in zip(_INSERT_COLUMNS, self._processors, strict=True):
                value = values[name]
                args.append(process(value) if process is not None and value is not None else value)
        return sql, args

    def mark(self, count: int) -> str:
        """The statement setting ``published_at`` (first argument) on ``count`` ids."""
        marks = ", ".join("?" * count)
        return (
            f'UPDATE "{t.name}" SET published_at = ? '
            f"WHERE published_at IS NULL AND id IN ({marks}) RETURNING position"
        )

    def timestamp(self, value: datetime) -> Any:
        """``value`` as the ``published_at`` column stores it."""
        process = self._processors[_INSERT_COLUMNS.index("published_at")]
        return process(value) if process is not None else value


def _resolve(
    items: Sequence[tuple[Event, str | None]],
    results: Sequence[tuple[StoredEvent, bool] | None],
    by_key: dict[tuple[str, str], StoredEvent],
    by_id: dict[str, StoredEvent],
) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
    """``insert_many``'s answer: each item's own result, else the event stored first
    under its key, else DuplicateEventError (its id is taken by another key)."""
    out: list[tuple[StoredEvent, bool] | DuplicateEventError] = []
    for (event, ext), result in zip(items, results, strict=True):
        if result is not None:
            out.append(result)
            continue
        found = by_key.get((event.source, ext)) if ext is not None else by_id.get(event.id)
        if found is None:
            out.append(
                DuplicateEventError(f"event id {event.id!r} is already used by another event")
            )
        else:
            out.append((found, False))
    return out


def _row_to_stored(row: Any) -> StoredEvent:
    m = row._mapping
    event = Event.model_validate(
        {
            "id": m["id"],
            "event_name": m["event_name"],
            "source": m["source"],
            "user_id": m["user_id"],
            "payload": m["payload"],
            "metadata": m["metadata"],
            "created_at": m["created_at"],
            "processed_at": m["processed_at"],
        }
    )
    stored_at = _utc(m["stored_at"])
    assert stored_at is not None
    return StoredEvent(
        event=event,
        position=int(m["position"]),
        external_id=m["external_id"],
        stored_at=stored_at,
        published_at=_utc(m["published_at"]),
    )


class EventStore:
    """Events in the store's ``events`` table. Get it as ``store.events``."""

    def __init__(self, store: Database) -> None:
        self._store = store
        self._lock_key = advisory_key("eventmill-events", store.config.schema or "")
        fast = store.dialect == "sqlite" and not store.config.memory
        self._fast = _SqliteFastPath(store) if fast else None

    # -- writes ---------------------------------------------------------------------

    async def insert(
        self,
        event: Event,
        external_id: str | None = None,
        *,
        published: bool = False,
    ) -> tuple[StoredEvent, bool]:
        """Store ``event`` unless already stored; return ``(stored, created)``.

        With ``external_id`` the key is ``(event.source, external_id)``: of any number
        of concurrent inserts with one key exactly one creates the row, and every other
        returns that first event (its id may differ from ``event.id``) with
        ``created=False``. Without it the key is ``event.id``. ``published=True`` stores
        the event as already published (not in the outbox).

        Raises :class:`~eventmill.store.errors.DuplicateEventError` when ``event.id`` is taken by an
        event with another key, :class:`~eventmill.store.errors.StoreUnavailableError` when the
        database is unreachable.
        """
        now = _now()
        values = _values(event, external_id, now, published)
        dialect = self._store.dialect
        ins = (postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)).values(values)
        stmt = ins.on_conflict_do_nothing().returning(t.c.position)
        async with self._store.transaction(write=True) as conn:
            if dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key}
                )
            position = (await conn.execute(stmt)).scalar_one_or_none()
            if position is not None:
                return (
                    StoredEvent(
                        event=event,
                        position=int(position),
                        external_id=external_id,
                        stored_at=now,
                        published_at=values["published_at"],
                    ),
                    True,
                )
            if external_id is not None:
                where = sa.and_(t.c.source == event.source, t.c.external_id == external_id)
            else:
                where = t.c.id == event.id
            row = (await conn.execute(sa.select(*_COLUMNS).where(where))).first()
        if row is None:
            raise DuplicateEventError(f"event id {event.id!r} is already used by another event")
        return _row_to_stored(row), False

    async def insert_many(
        self,
        items: Sequence[tuple[Event, str | None]],
        *,
        published: bool = False,
    ) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
        """Insert many ``(event, external_id)`` pairs in one transaction (group commit).

        Each item gets what :meth:`insert` would give it, in input order: ``(stored,
        created)``, or a :class:`~.errors.DuplicateEventError` *returned* (not raised)
        when its event id is taken by another key. Items with the same key in one call
        behave like concurrent inserts: the first creates, the others get it back.
        Raises only for errors of the whole batch (e.g. StoreUnavailableError).
        """
        if not items:
            return []
        now = _now()
        params = [_values(event, ext, now, published) for event, ext in items]
        if self._fast is not None and len(params) <= _ID_CHUNK:
            return await self._insert_many_sqlite(items, params, now, published)
        dialect = self._store.dialect
        ins = postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)
        stmt = ins.on_conflict_do_nothing().returning(
            t.c.id, t.c.position, t.c.source, t.c.external_id
        )
        async with self._store.transaction(write=True) as conn:
            if dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key}
                )
            created: dict[tuple[str, str, str | None], int] = {}
            for i in range(0, len(params), _ID_CHUNK):
                for row in await conn.execute(stmt, params[i : i + _ID_CHUNK]):
                    created[(row.id, row.source, row.external_id)] = int(row.position)
            results: list[tuple[StoredEvent, bool] | None] = []
            for event, ext in items:
                position = created.pop((event.id, event.source, ext), None)
                if position is None:
                    results.append(None)
                else:
                    stored = StoredEvent(event, position, ext, now, now if published else None)
                    results.append((stored, True))
            missing = [items[i] for i, r in enumerate(results) if r is None]
            by_key, by_id = await self._lookup(conn, missing) if missing else ({}, {})
        return _resolve(items, results, by_key, by_id)

    async def _insert_many_sqlite(
        self,
        items: Sequence[tuple[Event, str | None]],
        params: list[dict[str, Any]],
        now: datetime,
        published: bool,
    ) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
        """SQLite: one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` in
        autocommit, i.e. one statement and one transaction, run by
        :meth:`Store.sqlite_write` (inline, without a round trip to a driver thread);
        then, only if some rows were already there, one read of those."""
        assert self._fast is not None
        sql, args = self._fast.insert(params)
        rows = await self._store.sqlite_write(sql, args)
        created = {(r[0], r[2], r[3]): int(r[1]) for r in rows}
        results: list[tuple[StoredEvent, bool] | None] = []
        for event, ext in items:
            position = created.pop((event.id, event.source, ext), None)
            if position is None:
                results.append(None)
            else:
                stored = StoredEvent(event, position, ext, now, now if published else None)
                results.append((stored, True))
        missing = [items[i] for i, r in enumerate(results) if r is None]
        if not missing:
            return [r for r in results if r is not None]
        async with self._store.transaction(write=False) as conn:
            by_key, by_id = await self._lookup(conn, missing)
        return _resolve(items, results, by_key, by_id)

    async def _lookup(
        self, conn: AsyncConnection, items: Sequence[tuple[Event, str | None]]
    ) -> tuple[dict[tuple[str, str], StoredEvent], dict[str, StoredEvent]]:
        pairs = sorted({(e.source, ext) for e, ext in items if ext is not None})
        ids = sorted({e.id for e, ext in items if ext is None})
        by_key: dict[tuple[str, str], StoredEvent] = {}
        by_id: dict[str, StoredEvent] = {}
        for i in range(0, len(pairs), _ID_CHUNK):
            chunk = pairs[i : i + _ID_CHUNK]
            stmt = sa.select(*_COLUMNS).where(sa.tuple_(t.c.source, t.c.external_id).in_(chunk))
            for row in await conn.execute(stmt):
                stored = _row_to_stored(row)
                assert stored.external_id is not None
                by_key[(stored.event.source, stored.external_id)] = stored
        for i in range(0, len(ids), _ID_CHUNK):
            stmt = sa.select(*_COLUMNS).where(t.c.id.in_(ids[i : i + _ID_CHUNK]))
            for row in await conn.execute(stmt):
                stored = _row_to_stored(row)
                by_id[stored.id] = stored
        return by_key, by_id

    async def insert_if_absent_by_id(
        self, event: Event, *, published: bool = True
    ) -> tuple[StoredEvent, bool]:
        """Store ``event`` unless an event with its id is stored (the audit path).

        Same as ``insert(event, None, published=published)``; ``published`` defaults to
        ``True`` because the event was seen on the bus.
        """
        return await self.insert(event, None, published=published)

    async def mark_published(self, ids: Sequence[str]) -> int:
        """Set ``published_at`` to now on those of ``ids`` still unpublished; return how many."""
        if not ids:
            return 0
        now = _now()
        if self._fast is not None and len(ids) <= _ID_CHUNK:
            # one statement, one transaction, one round trip to the driver's thread
            args = [self._fast.timestamp(now), *ids]
            return len(await self._store.sqlite_write(self._fast.mark(len(ids)), args))
        count = 0
        async with self._store.transaction(write=True) as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = list(ids[i : i + _ID_CHUNK])
                result = await conn.execute(
                    sa.update(t)
                    .where(t.c.id.in_(chunk), t.c.published_at.is_(None))
                    .values(published_at=now)
                )
                count += result.rowcount
        return count

    # -- reads ----------------------------------------------------------------------

    async def unpublished(
        self, limit: int = 100, older_than: float | timedelta = 0.0
    ) -> list[StoredEvent]:
        """Return up to ``limit`` events never published, stored at least ``older_than``
        (seconds) ago, oldest first: the outbox the relay publishes."""
        if limit < 1:
            raise StoreError("limit must be at least 1")
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        cutoff = _now() - age
        stmt = (
            sa.select(*_COLUMNS)
            .where(t.c.published_at.is_(None), t.c.stored_at <= cutoff)
            .order_by(t.c.position)
            .limit(limit)
        )
        async with self._store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_stored(r) for r in rows]

    async def get(self, event_id: str) -> StoredEvent | None:
        """Return the stored event with id ``event_id``, or ``None``."""
        async with self._store.transaction(write=False) as conn:
            row = (await conn.execute(sa.select(*_COLUMNS).where(t.c.id == event_id))).first()
        return None if row is None else _row_to_stored(row)

    async def query(
        self,
        *,
        user_id: str | None = None,
        event_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
        order: Literal["asc", "desc"] = "asc",
    ) -> EventPage:
        """Return one page of events matching every filter given, ordered by position.

        ``event_name`` is exact or a pattern where ``*`` matches any run of characters
        (``razorpay.payment.*``). ``since <= created_at < until`` (naive datetimes are
        UTC). ``after`` is a cursor from a previous page (or :attr:`StoredEvent.cursor`
        for ascending order). ``limit`` is 1-1000. ``order="asc"`` reads oldest first
        (resumable reads), ``"desc"`` newest first. Raises
        :class:`~eventmill.store.errors.InvalidCursorError` for a bad cursor.
        """
        if order not in ("asc", "desc"):
            raise StoreError("order must be 'asc' or 'desc'")
        if not 1 <= limit <= MAX_LIMIT:
            raise StoreError(f"limit must be between 1 and {MAX_LIMIT}")
        conditions: list[sa.ColumnElement[bool]] = []
        if user_id is not None:
            conditions.append(t.c.user_id == user_id)
        if source is not None:
            conditions.append(t.c.source == source)
        if event_name is not None:
            conditions.append(self._name_condition(event_name))
        if since is not None:
            conditions.append(t.c.created_at >= _utc(since))
        if until is not None:
            conditions.append(t.c.created_at < _utc(until))
        if after is not None:
            position = decode_cursor(after, order)
            conditions.append(
                t.c.position > position if order == "asc" else t.c.position < position
            )
        stmt = (
            sa.select(*_COLUMNS)
            .where(*conditions)
            .order_by(t.c.position.asc() if order == "asc" else t.c.position.desc())
            .limit(limit + 1)
        )
        async with self._store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        has_more = len(rows) > limit
        found = [_row_to_stored(r) for r in rows[:limit]]
        next_cursor = encode_cursor(found[-1].position, order) if found else after
        return EventPage(events=found, next_cursor=next_cursor, has_more=has_more)

    def _name_condition(self, pattern: str) -> sa.ColumnElement[bool]:
        try:
            validate_pattern(pattern)
        except ConfigurationError:
            raise EventValidationError(
                "event_name filter must be letters, digits, '_', '.', ':', '-', '*'",
                field="event_name",
            ) from None
        if "*" not in pattern:
            return t.c.event_name == pattern
        if self._store.dialect == "sqlite":
            # GLOB is case-sensitive; names cannot contain its other specials (? [ ]).
            return t.c.event_name.op("GLOB")(pattern)
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return t.c.event_name.like(escaped.replace("*", "%"), escape="\\")

    # -- cursors --------------------------------------------------------------------

    @staticmethod
    def cursor_for(position: int, order: Literal["asc", "desc"] = "asc") -> str:
        """Return the cursor that continues after ``position`` in ``order``."""
        return encode_cursor(position, order)

    @staticmethod
    def position_of(cursor: str, order: Literal["asc", "desc"] = "asc") -> int:
        """Return the position a cursor points after (InvalidCursorError if malformed)."""
        return decode_cursor(cursor, order)
