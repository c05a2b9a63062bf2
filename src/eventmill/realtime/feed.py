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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import sqlalchemy as sa

from eventmill.store import Store
from eventmill.store.tables import events as t

__all__ = ["Feed", "FeedEvent", "name_condition"]

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


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _one_line(text: str) -> str:
    """JSON text without line breaks (stored JSON is compact; this is a safeguard for
    SSE, where a line break would end the ``data:`` field)."""
    if "\n" in text or "\r" in text:
        return orjson.dumps(orjson.loads(text)).decode()
    return text


@dataclass(slots=True)
class FeedEvent:
    """One stored event as realtime sends it: its position, what routing needs, and its
    JSON form (the same as :meth:`eventmill.events.Event.to_json`)."""

    position: int
    id: str
    event_name: str
    user_id: str | None
    json: str
    """The event's JSON text."""
    _ws: str | None = field(default=None, repr=False)
    _sse: bytes | None = field(default=None, repr=False)

    def ws_frame(self) -> str:
        """The WebSocket message: ``{"type": "event", "position": …, "payload": <event>}``."""
        if self._ws is None:
            self._ws = f'{{"type":"event","position":{self.position},"payload":{self.json}}}'
        return self._ws

    def sse_frame(self) -> bytes:
        """The SSE event: ``id:`` the position, ``event:`` the name, ``data:`` the event."""
        if self._sse is None:
            self._sse = (
                f"id: {self.position}\nevent: {self.event_name}\ndata: {self.json}\n\n".encode()
            )
        return self._sse


def _event(row: Any) -> FeedEvent:
    (position, event_id, name, source, user_id, payload, metadata, created, processed) = row
    body = {
        "id": event_id,
        "event_name": name,
        "source": source,
        "user_id": user_id,
        "payload": orjson.Fragment(_one_line(payload)),
        "metadata": orjson.Fragment(_one_line(metadata)),
        "created_at": _utc(created),
        "processed_at": _utc(processed),
    }
    text = orjson.dumps(body, option=orjson.OPT_UTC_Z).decode()
    return FeedEvent(int(position), event_id, name, user_id, text)


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


class Feed:
    """Reads of the store's events for realtime (read-only, bounded)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def head(self) -> int:
        """The newest position stored (0 when the store is empty)."""
        async with self.store.transaction(write=False) as conn:
            value = (await conn.execute(sa.select(sa.func.max(t.c.position)))).scalar()
        return int(value or 0)

    async def oldest(self) -> int | None:
        """The oldest position still stored (``None`` when the store is empty)."""
        async with self.store.transaction(write=False) as conn:
            value = (await conn.execute(sa.select(sa.func.min(t.c.position)))).scalar()
        return None if value is None else int(value)

    async def after(self, position: int, limit: int) -> list[FeedEvent]:
        """Up to ``limit`` events after ``position``, in position order (the hub's read)."""
        stmt = (
            sa.select(*_COLUMNS).where(t.c.position > position).order_by(t.c.position).limit(limit)
        )
        async with self.store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
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
