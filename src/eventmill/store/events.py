"""The event store: deduplicated inserts, the outbox, lookups and cursor-paged queries."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from eventmill.errors import ConfigurationError, EventValidationError
from eventmill.events.envelope import Event, EventMetadata, to_utc
from eventmill.events.registry import compile_pattern, validate_pattern
from eventmill.store.database import advisory_key
from eventmill.store.errors import (
    DuplicateEventError,
    InvalidCursorError,
    InvalidValueError,
    StoreError,
)
from eventmill.store.tables import events as t

if TYPE_CHECKING:
    from eventmill.store.database import Database

__all__ = ["LIMITS", "EventPage", "EventStore", "StoredEvent", "check_event", "check_external_id"]

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
    if value is None or value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


_MAX_POSITION = 2**63 - 1


def encode_cursor(position: int, order: Literal["asc", "desc"] = "asc") -> str:
    """Return the opaque cursor for "after ``position``" in ``order``."""
    raw = f"v1:{order[0]}:{position}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, order: Literal["asc", "desc"] = "asc") -> int:
    """Return the position in ``cursor``; raise InvalidCursorError if malformed, for
    the other order, or made by another listing (endpoints, deliveries)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = base64.urlsafe_b64decode(padded.encode("ascii")).decode().split(":")
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidCursorError("malformed cursor") from None
    if len(parts) == 2 and parts[0] == "v1" and "_" in parts[1]:
        # v1:<id>: a cursor of the endpoints or deliveries listing
        raise InvalidCursorError(
            "this cursor belongs to another listing, not the events one: pass the "
            "next_cursor of this listing's previous page"
        )
    try:
        version, direction, position = parts
        if not (position.isascii() and position.isdigit()) or len(position) > 19:
            raise ValueError(position)  # only what encode_cursor writes: 0-9, 64-bit
        value = int(position)
    except ValueError:
        raise InvalidCursorError("malformed cursor") from None
    if version != "v1" or direction not in ("a", "d") or value > _MAX_POSITION:
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


LIMITS: Final = {"id": 128, "source": 64, "event_name": 200, "user_id": 256, "external_id": 256}
"""The most characters each text column holds (``store/tables.py``). Every one of these
values is 1 to that many characters, none of them a control character (U+0000-U+001F,
U+007F): PostgreSQL cannot store U+0000 in text at all, and SQLite would store what
PostgreSQL refuses; the store refuses both the same way, with
:class:`~eventmill.store.errors.InvalidValueError`."""

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(field: str, value: object, limit: int) -> InvalidValueError:
    """The error for a ``field`` value that :func:`_check_text` refused."""
    rule = f"{field} must be 1-{limit} characters without control characters"
    if not isinstance(value, str):
        return InvalidValueError(f"{field} must be a string", field=field, problem="not_text")
    if not value:
        return InvalidValueError(f"{rule} (it is empty)", field=field, problem="empty")
    if len(value) > limit:
        return InvalidValueError(
            f"{rule} (it has {len(value)})", field=field, problem="too_long", limit=limit
        )
    if _CONTROL.search(value) is not None:
        return InvalidValueError(
            f"{rule} (it has one)", field=field, problem="control_character", limit=limit
        )
    return InvalidValueError(
        f"{field} must be valid Unicode text (it has a lone surrogate)",
        field=field,
        problem="not_text",
        limit=limit,
    )


def _check_text(field: str, value: object) -> None:
    """Raise InvalidValueError unless ``value`` fits the ``field`` column (see LIMITS)."""
    limit = LIMITS[field]
    if (
        type(value) is str
        and 0 < len(value) <= limit
        and _CONTROL.search(value) is None
        and (value.isascii() or _encodable(value))
    ):
        return
    raise _refuse(field, value, limit)


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _matchable(value: str, field: str) -> bool:
    """Whether a query value could equal a stored ``field`` value. One that cannot
    (too long, with U+0000, not encodable) matches nothing, on every backend alike;
    PostgreSQL could not even compare it (it refuses U+0000 in any text)."""
    return (
        len(value) <= LIMITS[field]
        and "\x00" not in value
        and (value.isascii() or _encodable(value))
    )


def check_external_id(external_id: str | None) -> None:
    """Raise :class:`~eventmill.store.errors.InvalidValueError` (``field="external_id"``)
    unless ``external_id`` is ``None`` or 1-256 characters without control characters:
    what :meth:`EventStore.insert` and :meth:`EventStore.insert_many` accept. The error
    is the caller's (HTTP 4xx), not the store's."""
    if external_id is not None:
        _check_text("external_id", external_id)


def check_event(event: Event, external_id: str | None = None) -> None:
    """Raise :class:`~eventmill.store.errors.InvalidValueError` naming the first value of
    ``event`` (or ``external_id``) the store cannot hold: text columns per
    :data:`LIMITS` (an Event built by validation always passes these; one built with
    ``model_construct`` or changed afterwards may not). The payload and metadata are
    checked when they are written (they must be JSON-serializable)."""
    event_id, source, name, user_id = event.id, event.source, event.event_name, event.user_id
    # one pass for the usual case (all fine), field by field only to name a failure
    if (
        type(event_id) is str
        and type(source) is str
        and type(name) is str
        and (user_id is None or type(user_id) is str)
        and (external_id is None or type(external_id) is str)
        and 0 < len(event_id) <= 128
        and 0 < len(source) <= 64
        and 0 < len(name) <= 200
        and (user_id is None or 0 < len(user_id) <= 256)
        and (external_id is None or 0 < len(external_id) <= 256)
    ):
        text = f"{event_id}{source}{name}{user_id or ''}{external_id or ''}"
        if text.isascii():
            if text.isprintable():  # ASCII without control characters
                return
        elif _CONTROL.search(text) is None and _encodable(text):
            return
    _check_text("id", event_id)
    _check_text("source", source)
    _check_text("event_name", name)
    if user_id is not None:
        _check_text("user_id", user_id)
    if external_id is not None:
        _check_text("external_id", external_id)


def _raise_if_unserializable(
    items: Sequence[tuple[Event, str | None]], error: BaseException
) -> None:
    """After a write failed with ``error``: raise InvalidValueError (from ``error``) for
    the first item whose payload or metadata cannot be written as JSON (too deeply
    nested, a lone surrogate, a value JSON has no form for), so that the caller's error
    is told apart from the store's. Returns if every item serializes."""
    for event, _ in items:
        for field, value in (("payload", event.payload), ("metadata", event.to_dict()["metadata"])):
            try:
                orjson.dumps(value, option=orjson.OPT_UTC_Z)
            except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
                raise InvalidValueError(
                    f"{field} cannot be stored as JSON: {exc}", field=field, problem="not_json"
                ) from error


def _values(
    event: Event, external_id: str | None, now: datetime, published: bool
) -> dict[str, Any]:
    """The row of a checked event (:func:`check_event`)."""
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


_JSON_COLUMNS: Final = frozenset({"payload", "metadata"})


class _SqliteFastPath:
    """Driver-level SQL for SQLite's one-statement writes and the duplicate lookup
    that follows them, with each value converted by its column type's own bind and
    result processors (what SQLAlchemy would send and return). Statements are cached
    per row count."""

    def __init__(self, store: Database) -> None:
        dialect = store.engine.sync_engine.dialect
        processors = []
        for name in _INSERT_COLUMNS:
            column_type = t.c[name].type
            processors.append(column_type.dialect_impl(dialect).bind_processor(dialect))
        self._processors = tuple(processors)
        json = t.c.payload.type.dialect_impl(dialect).result_processor(dialect, None)
        when = t.c.created_at.type.dialect_impl(dialect).result_processor(dialect, None)
        assert json is not None
        assert when is not None
        self._json: Callable[[Any], Any] = json
        self._datetime: Callable[[Any], Any] = when
        self._insert_sql: dict[int, str] = {}
        names = ", ".join(f'"{name}"' for name in _INSERT_COLUMNS)
        self._insert_head = f'INSERT INTO "{t.name}" ({names}) VALUES '
        self._row = "(" + ", ".join("?" * len(_INSERT_COLUMNS)) + ")"
        self._select_head = (
            "SELECT " + ", ".join(f'"{c.name}"' for c in _COLUMNS) + f' FROM "{t.name}" WHERE '
        )

    def insert(self, params: Sequence[dict[str, Any]]) -> tuple[str, list[Any]]:
        """The statement inserting ``params`` (``_values`` dicts) and its arguments.
        Raises TypeError for a value its column cannot serialize."""
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
                # JSON columns encode None too (as the text "null": a JSON null payload)
                if process is None or (value is None and name not in _JSON_COLUMNS):
                    args.append(value)
                else:
                    args.append(process(value))
        return sql, args

    def lookup(self, pairs: Sequence[tuple[str, str]], ids: Sequence[str]) -> tuple[str, list[Any]]:
        """The statement reading the events stored under ``pairs`` (source, external
        id) or ``ids``: one index seek per key (see :func:`_key_conditions`)."""
        terms: list[str] = []
        args: list[Any] = []
        for source, external_ids in _by_source(pairs):
            marks = ", ".join("?" * len(external_ids))
            terms.append(f"(source = ? AND external_id IN ({marks}))")
            args += [source, *external_ids]
        if ids:
            terms.append(f"id IN ({', '.join('?' * len(ids))})")
            args += ids
        return self._select_head + " OR ".join(terms), args

    def stored(self, row: Sequence[Any]) -> StoredEvent:
        """A row of :meth:`lookup` as a StoredEvent (what ``_row_to_stored`` makes of
        the row SQLAlchemy would return, in fewer steps: a retry storm reads many)."""
        (
            position,
            event_id,
            source,
            external_id,
            event_name,
            user_id,
            payload,
            meta,
            created_at,
            processed_at,
            stored_at,
            published_at,
        ) = row
        json, when = self._json, self._datetime
        event = _stored_event(
            {
                "id": event_id,
                "event_name": event_name,
                "source": source,
                "user_id": user_id,
                "payload": json(payload),
                "metadata": json(meta),
                "created_at": when(created_at).replace(tzinfo=UTC),
                "processed_at": (
                    None if processed_at is None else when(processed_at).replace(tzinfo=UTC)
                ),
            }
        )
        return StoredEvent(
            event,
            position,
            external_id,
            when(stored_at).replace(tzinfo=UTC),
            None if published_at is None else when(published_at).replace(tzinfo=UTC),
        )

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


def _by_source(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """``(source, external_id)`` pairs grouped by source, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for source, external_id in pairs:
        groups.setdefault(source, []).append(external_id)
    return list(groups.items())


def _key_conditions(pairs: Sequence[tuple[str, str]], ids: Sequence[str]) -> sa.ColumnElement[bool]:
    """``(source = s AND external_id IN (...)) OR ... OR id IN (...)``: each key an
    index seek on SQLite and PostgreSQL. (A row-value ``(source, external_id) IN
    (VALUES ...)`` made SQLite scan the whole unique index for more than one pair.)"""
    terms: list[sa.ColumnElement[bool]] = [
        sa.and_(t.c.source == source, t.c.external_id.in_(external_ids))
        for source, external_ids in _by_source(pairs)
    ]
    if ids:
        terms.append(t.c.id.in_(list(ids)))
    return sa.or_(*terms)


def _keys(
    items: Sequence[tuple[Event, str | None]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """The distinct keys of ``items``: (source, external id) pairs and bare event ids."""
    pairs = sorted({(e.source, ext) for e, ext in items if ext is not None})
    ids = sorted({e.id for e, ext in items if ext is None})
    return pairs, ids


def _index(
    found: Sequence[StoredEvent], pairs: Sequence[tuple[str, str]], ids: Sequence[str]
) -> tuple[dict[tuple[str, str], StoredEvent], dict[str, StoredEvent]]:
    """``found`` by key (a row can answer both a pair and an id)."""
    wanted_pairs, wanted_ids = set(pairs), set(ids)
    by_key: dict[tuple[str, str], StoredEvent] = {}
    by_id: dict[str, StoredEvent] = {}
    for stored in found:
        if stored.external_id is not None:
            key = (stored.event.source, stored.external_id)
            if key in wanted_pairs:
                by_key[key] = stored
        if stored.id in wanted_ids:
            by_id[stored.id] = stored
    return by_key, by_id


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


_EVENT_FIELDS: Final = frozenset(Event.model_fields)
_METADATA_FIELDS: Final = frozenset(EventMetadata.model_fields)


def _stored_event(values: dict[str, Any]) -> Event:
    """The Event of a stored row's ``values`` (``Event.model_fields``, times UTC; the
    dict becomes the event's own).

    The row was validated when it was stored: it is built as ``model_validate`` would
    build it (the same fields, fields set and equality) without validating it again,
    which costs more than the rest of reading it (as ``Event.from_parts`` does for
    values already in validated form). Metadata not in the stored form (all of its
    fields, none other) and times that are not UTC datetimes are validated instead.
    """
    meta = values["metadata"]
    created_at = values["created_at"]
    processed_at = values["processed_at"]
    if (
        type(meta) is not dict
        or meta.keys() != _METADATA_FIELDS
        or type(created_at) is not datetime
        or created_at.tzinfo is not UTC
        or not (processed_at is None or type(processed_at) is datetime)
        or (processed_at is not None and processed_at.tzinfo is not UTC)
    ):
        return Event.model_validate(values)
    setattr_ = object.__setattr__
    metadata = EventMetadata.__new__(EventMetadata)
    setattr_(metadata, "__dict__", meta)
    setattr_(metadata, "__pydantic_fields_set__", set(_METADATA_FIELDS))
    setattr_(metadata, "__pydantic_extra__", None)
    setattr_(metadata, "__pydantic_private__", None)
    values["metadata"] = metadata
    event = Event.__new__(Event)
    setattr_(event, "__dict__", values)
    setattr_(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    setattr_(event, "__pydantic_extra__", None)
    setattr_(event, "__pydantic_private__", None)
    return event


def _row_to_stored(row: Sequence[Any]) -> StoredEvent:
    """A row of ``_COLUMNS`` (a SQLAlchemy Row or a sequence in that order)."""
    (
        position,
        event_id,
        source,
        external_id,
        event_name,
        user_id,
        payload,
        meta,
        created_at,
        processed_at,
        stored_at,
        published_at,
    ) = row
    event = _stored_event(
        {
            "id": event_id,
            "event_name": event_name,
            "source": source,
            "user_id": user_id,
            "payload": payload,
            "metadata": meta,
            "created_at": _utc(created_at),
            "processed_at": _utc(processed_at),
        }
    )
    stored = _utc(stored_at)
    assert stored is not None
    return StoredEvent(
        event=event,
        position=int(position),
        external_id=external_id,
        stored_at=stored,
        published_at=_utc(published_at),
    )


_STORM: Final = 0.5
"""When more than this share of recent ``insert_many`` items were already stored, it
reads the keys before inserting (see ``EventStore.insert_many``)."""
_STORM_WEIGHT: Final = 0.25
"""Weight of the latest call in that moving average."""

_NAMES_WALKED: Final = 1000
"""The most distinct stored names a pattern's prefix range is walked for; past it a
pattern is matched as a GLOB/LIKE filter on the index range of its prefix instead."""
_MERGED_NAMES: Final = 32
"""Up to this many names matched by a pattern are read as one index range each,
``limit`` events at most from each, merged; more are read together and sorted."""

_NAMES_SQL: Final = sa.text(
    """
WITH RECURSIVE names(name, n) AS (
    SELECT (SELECT min(event_name) FROM events WHERE event_name >= :low), 1
    UNION ALL
    SELECT (SELECT min(event_name) FROM events WHERE event_name > names.name), names.n + 1
    FROM names WHERE names.name < :high AND names.n < :cap
)
SELECT name FROM names WHERE name < :high
"""
)
"""The distinct event names in ``[low, high)``, at most ``cap`` of them: one seek on the
``event_name`` index each (a "loose index scan")."""


def _unindexed(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """``column || ''``: the same value, but no index of ``column`` is used for a
    condition on it (the query chose another index to drive the read)."""
    return column.op("||")(sa.literal_column("''"))


def _bound(field: str, value: datetime) -> datetime:
    """A ``since``/``until`` filter in UTC; one outside the years 1-9999 there is the
    caller's error, named (not an ``OverflowError`` from deep in the query)."""
    try:
        return to_utc(value)
    except ValueError as exc:
        raise EventValidationError(f"{field}: {exc}", field=field) from None


def _check_pattern(pattern: str) -> None:
    try:
        validate_pattern(pattern)
    except ConfigurationError:
        raise EventValidationError(
            "event_name filter must be letters, digits, '_', '.', ':', '-', '*'",
            field="event_name",
        ) from None


def _page(
    conditions: Sequence[sa.ColumnElement[bool]],
    names: Sequence[str],
    order: Literal["asc", "desc"],
    rows: int,
    *,
    by_position: bool,
) -> sa.Select[Any]:
    """The statement reading one page: the first ``rows`` events in ``order`` that
    match ``conditions`` and, when ``names`` is not empty, have one of those names.

    ``by_position=False`` (a time range drives the read) orders by an expression of
    the position, so that neither database reads the table in position order filtering
    on ``created_at`` (which reads every event outside the range first): the
    ``created_at`` index bounds the events read instead.
    """

    def ordered(column: Any) -> Any:
        return column.asc() if order == "asc" else column.desc()

    if 1 < len(names) <= _MERGED_NAMES:
        parts = [
            sa.select(*_COLUMNS)
            .where(*conditions, t.c.event_name == name)
            .order_by(ordered(t.c.position))
            .limit(rows)
            .subquery()
            for name in names
        ]
        merged = sa.union_all(*(sa.select(part) for part in parts)).subquery()
        return sa.select(*merged.c).order_by(ordered(merged.c.position)).limit(rows)
    where = list(conditions)
    if len(names) == 1:
        where.append(t.c.event_name == names[0])
    elif names:
        where.append(t.c.event_name.in_(list(names)))
    key = t.c.position if by_position else t.c.position + 0
    return sa.select(*_COLUMNS).where(*where).order_by(ordered(key)).limit(rows)


class EventStore:
    """Events in the store's ``events`` table. Get it as ``store.events``."""

    def __init__(self, store: Database) -> None:
        self._store = store
        self._lock_key = advisory_key("eventmill-events", store.config.schema or "")
        fast = store.dialect == "sqlite" and not store.config.memory
        self._fast = _SqliteFastPath(store) if fast else None
        self._duplicates = 0.0
        """Moving average of the share of insert_many's items that were stored before."""

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

        Raises :class:`~eventmill.store.errors.InvalidValueError` for a value the store
        cannot hold (see :data:`LIMITS`; a payload or metadata that is not JSON),
        :class:`~eventmill.store.errors.DuplicateEventError` when ``event.id`` is taken
        by an event with another key,
        :class:`~eventmill.store.errors.StoreUnavailableError` when the database is
        unreachable.
        """
        check_event(event, external_id)
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
            try:
                position = (await conn.execute(stmt)).scalar_one_or_none()
            except sa_exc.StatementError as exc:
                _raise_if_unserializable([(event, external_id)], exc)
                raise
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
        Raises for errors of the whole batch (e.g. StoreUnavailableError), and
        :class:`~.errors.InvalidValueError` for the first item holding a value the
        store cannot hold (then nothing of the batch is stored; check items one by one
        with :func:`check_event` first to keep one caller's error its own).

        An item already stored costs one index seek by its key, whatever the size of
        the store: in one read after the insert, or, while most items of recent calls
        were already stored (a provider's retry storm), in one read *before* it, so
        that a batch of duplicates writes nothing (and on PostgreSQL takes no lock).
        """
        if not items:
            return []
        for event, ext in items:
            check_event(event, ext)
        if self._duplicates < _STORM:
            results = await self._insert_items(items, published)
        else:
            results = await self._insert_absent(items, published)
        stored_before = sum(1 for r in results if not isinstance(r, tuple) or not r[1])
        self._duplicates += _STORM_WEIGHT * (stored_before / len(items) - self._duplicates)
        return results

    async def _insert_absent(
        self, items: Sequence[tuple[Event, str | None]], published: bool
    ) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
        """``insert_many`` for a batch expected to be mostly stored: read the items'
        keys first, insert only the others."""
        pairs, ids = _keys(items)
        if self._fast is not None and len(pairs) + len(ids) <= _ID_CHUNK:
            sql, args = self._fast.lookup(pairs, ids)
            rows = await self._store.sqlite_write(sql, args)  # a read, inline: see below
            by_key, by_id = _index([self._fast.stored(row) for row in rows], pairs, ids)
        else:
            async with self._store.transaction(write=False) as conn:
                by_key, by_id = await self._lookup(conn, items)
        results: list[tuple[StoredEvent, bool] | DuplicateEventError | None] = []
        for event, ext in items:
            found = by_key.get((event.source, ext)) if ext is not None else by_id.get(event.id)
            results.append(None if found is None else (found, False))
        absent = [i for i, result in enumerate(results) if result is None]
        if absent:
            inserted = await self._insert_items([items[i] for i in absent], published)
            for i, result in zip(absent, inserted, strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def _insert_items(
        self, items: Sequence[tuple[Event, str | None]], published: bool
    ) -> list[tuple[StoredEvent, bool] | DuplicateEventError]:
        """``insert_many`` of checked items: insert, then read the keys of those that
        were not inserted."""
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
                try:
                    rows = await conn.execute(stmt, params[i : i + _ID_CHUNK])
                except sa_exc.StatementError as exc:
                    _raise_if_unserializable(items[i : i + _ID_CHUNK], exc)
                    raise
                for row in rows:
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
        then, only if some rows were already there, one read of those the same way
        (a retry storm is all such reads: they must cost no more than the inserts)."""
        assert self._fast is not None
        try:
            sql, args = self._fast.insert(params)
        except TypeError as exc:  # a payload orjson cannot serialize
            _raise_if_unserializable(items, exc)
            raise
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
        pairs, ids = _keys(missing)
        sql, args = self._fast.lookup(pairs, ids)
        # A read, run like the insert before it: on the event loop's own connection (it
        # sees every committed row), not on a pooled connection's thread.
        found = [self._fast.stored(row) for row in await self._store.sqlite_write(sql, args)]
        by_key, by_id = _index(found, pairs, ids)
        return _resolve(items, results, by_key, by_id)

    async def _lookup(
        self, conn: AsyncConnection, items: Sequence[tuple[Event, str | None]]
    ) -> tuple[dict[tuple[str, str], StoredEvent], dict[str, StoredEvent]]:
        pairs, ids = _keys(items)
        found: list[StoredEvent] = []
        for i in range(0, len(pairs), _ID_CHUNK):
            stmt = sa.select(*_COLUMNS).where(_key_conditions(pairs[i : i + _ID_CHUNK], ()))
            found += [_row_to_stored(row) for row in await conn.execute(stmt)]
        for i in range(0, len(ids), _ID_CHUNK):
            stmt = sa.select(*_COLUMNS).where(_key_conditions((), ids[i : i + _ID_CHUNK]))
            found += [_row_to_stored(row) for row in await conn.execute(stmt)]
        return _index(found, pairs, ids)

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
        ids = [i for i in ids if _matchable(i, "id")]  # others name no stored event
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
        """Return the stored event with id ``event_id``, or ``None`` (also for a value no
        event id can be, e.g. one holding U+0000)."""
        if not _matchable(event_id, "id"):
            return None
        async with self._store.transaction(write=False) as conn:
            row = (await conn.execute(sa.select(*_COLUMNS).where(t.c.id == event_id))).first()
        return None if row is None else _row_to_stored(row)

    async def get_many(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The stored events among ``event_ids``, by id (those not stored are absent)."""
        ids = list(dict.fromkeys(i for i in event_ids if _matchable(i, "id")))
        found: dict[str, StoredEvent] = {}
        if not ids:
            return found
        async with self._store.transaction(write=False) as conn:
            for i in range(0, len(ids), _ID_CHUNK):
                stmt = sa.select(*_COLUMNS).where(t.c.id.in_(ids[i : i + _ID_CHUNK]))
                for row in await conn.execute(stmt):
                    stored = _row_to_stored(row)
                    found[stored.event.id] = stored
        return found

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
        (resumable reads), ``"desc"`` newest first. A value no stored event can hold
        (e.g. holding U+0000) matches nothing. Raises
        :class:`~eventmill.store.errors.InvalidCursorError` for a bad cursor,
        :class:`~eventmill.EventValidationError` for a bad ``event_name`` pattern or a
        ``since``/``until`` outside the years 1-9999 in UTC.

        Cost: every filter is answered from an index (``migrations/versions``). With
        ``user_id``, ``source`` and an exact ``event_name``, alone or together, a page
        reads about ``limit`` index entries, at any store size. A pattern is answered
        as the exact names it matches (found by one index seek per distinct stored name
        in the range of its literal prefix), each read in position order, at most
        ``limit`` events each (more than 32 names: every matching event of them, then
        sorted). ``since``/``until`` without those filters read the events in the time
        range from the ``created_at`` index and sort them: a page costs in proportion
        to the events in the range.
        """
        if order not in ("asc", "desc"):
            raise StoreError("order must be 'asc' or 'desc'")
        if not 1 <= limit <= MAX_LIMIT:
            raise StoreError(f"limit must be between 1 and {MAX_LIMIT}")
        position = None if after is None else decode_cursor(after, order)
        if event_name is not None:
            _check_pattern(event_name)
        nothing = EventPage(events=[], next_cursor=after, has_more=False)
        for field, value in (("user_id", user_id), ("source", source)):
            if value is not None and not _matchable(value, field):
                return nothing

        # The index that drives the read is chosen here, not left to the planner (SQLite
        # has no statistics; it took the source index for a user's events of one
        # source): with user_id, the user's events in position order, the other
        # filters checked on each; else, with a time range, the created_at index over
        # the range, sorted; else (source, event_name, position) or (event_name,
        # position), for each name a pattern matches; else (source, position); else
        # the position itself.
        timed = since is not None or until is not None
        driver = "user" if user_id is not None else "time" if timed else "key"

        def filtered(name: str) -> Any:
            return t.c[name] if driver == "key" else _unindexed(t.c[name])

        conditions: list[sa.ColumnElement[bool]] = []
        if user_id is not None:
            conditions.append(t.c.user_id == user_id)
        if source is not None:
            conditions.append(filtered("source") == source)
        if since is not None:
            conditions.append(t.c.created_at >= _bound("since", since))
        if until is not None:
            conditions.append(t.c.created_at < _bound("until", until))
        if position is not None:
            key = t.c.position + 0 if driver == "time" else t.c.position
            conditions.append(key > position if order == "asc" else key < position)
        names: list[str] = []
        async with self._store.transaction(write=False) as conn:
            if event_name is not None and "*" not in event_name:
                conditions.append(filtered("event_name") == event_name)
            elif event_name is not None and event_name.strip("*"):  # "*" alone: no filter
                matched = await self._names(conn, event_name)
                if matched is None:  # too many distinct names in the prefix's range
                    conditions.append(self._pattern_condition(event_name))
                elif not matched:
                    return nothing
                elif driver == "key":
                    names = matched
                else:
                    conditions.append(filtered("event_name").in_(matched))
            stmt = _page(conditions, names, order, limit + 1, by_position=driver != "time")
            rows = (await conn.execute(stmt)).all()
        has_more = len(rows) > limit
        found = [_row_to_stored(r) for r in rows[:limit]]
        next_cursor = encode_cursor(found[-1].position, order) if found else after
        return EventPage(events=found, next_cursor=next_cursor, has_more=has_more)

    async def _names(self, conn: AsyncConnection, pattern: str) -> list[str] | None:
        """The distinct stored event names that ``pattern`` matches, found by walking
        the ``event_name`` index from name to name over its literal prefix's range;
        ``None`` if that range holds more than :data:`_NAMES_WALKED` names."""
        prefix = pattern.split("*", 1)[0]
        # names are ASCII letters, digits and "_.:-", all below "~" (and C-collated
        # on PostgreSQL): those starting with ``prefix`` lie in [prefix, prefix + "~")
        params = {"low": prefix, "high": prefix + "~", "cap": _NAMES_WALKED + 1}
        walked = [row[0] for row in await conn.execute(_NAMES_SQL, params)]
        if len(walked) > _NAMES_WALKED:
            return None
        regex = compile_pattern(pattern)
        return [name for name in walked if regex.fullmatch(name) is not None]

    def _pattern_condition(self, pattern: str) -> sa.ColumnElement[bool]:
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
