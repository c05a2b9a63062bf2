"""Group commit for the ingest path: many concurrent inserts, one store transaction.

Each request's :meth:`GroupCommitInserter.insert` has the same contract as
:meth:`eventmill.store.EventStore.insert` (dedup on ``(source, external_id)``, else on
the event id; ``(stored, created)``; :class:`~eventmill.DuplicateEventError` when the
id is taken by another key) and returns only after its row is committed. A single
writer task takes whatever requests are waiting (up to ``max_batch``) and stores
them with one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` and at most
one lookup of the duplicates, in one transaction: SQLite commits once for the whole
batch instead of once per request.

Waiting requests are bounded by ``max_pending``; when full, ``insert`` waits for room
(the request's own timeout then answers 503). TODO(store): this belongs in
``EventStore.insert_many``; it uses only the store's public tables and transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from eventmill.errors import DuplicateEventError, StoreError, StoreUnavailableError
from eventmill.events import Event
from eventmill.store import Store, StoredEvent
from eventmill.store.database import advisory_key
from eventmill.store.tables import events as t

__all__ = ["GroupCommitInserter"]

_COLUMNS: Final = (
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

_Item = tuple[Event, str | None, "asyncio.Future[tuple[StoredEvent, bool]]"]


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value.astimezone(UTC) if value is not None else None
    return value.replace(tzinfo=UTC)


def _stored(m: Any) -> StoredEvent:
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


def _fail(items: Sequence[_Item], exc: BaseException) -> None:
    for _, _, fut in items:
        if not fut.done():
            fut.set_exception(exc)


class GroupCommitInserter:
    """Coalesces concurrent event inserts into one transaction (see the module docstring)."""

    def __init__(self, store: Store, *, max_batch: int = 256, max_pending: int = 10_000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_pending)
        self._closed = False
        self._lock_key = advisory_key("eventmill-events", store.config.schema or "")
        dialect = postgresql if store.dialect == "postgresql" else sqlite
        self._stmt = dialect.insert(t).on_conflict_do_nothing().returning(t.c.id, t.c.position)

    async def insert(self, event: Event, external_id: str | None) -> tuple[StoredEvent, bool]:
        """Store ``event`` unless already stored (as ``EventStore.insert``), in a group commit."""
        if self._closed:
            raise StoreUnavailableError("the event store is closing")
        if external_id is not None and not (0 < len(external_id) <= 256):
            raise StoreError("external_id must be 1-256 characters")
        future: asyncio.Future[tuple[StoredEvent, bool]] = (
            asyncio.get_running_loop().create_future()
        )
        await self._queue.put((event, external_id, future))
        return await future

    async def run(self) -> None:
        """The writer: commit waiting inserts batch by batch until :meth:`close`."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [item for item in batch if not item[2].done()]
            if not live:
                continue
            try:
                results = await self._write(live)
            except asyncio.CancelledError:
                _fail(live, StoreUnavailableError("the event store is closing"))
                raise
            except Exception as exc:  # every waiter gets the store's error
                _fail(live, exc)
                continue
            for (_, _, fut), result in zip(live, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Refuse new inserts and fail those still waiting (they were never committed)."""
        self._closed = True
        while not self._queue.empty():
            _, _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreUnavailableError("the event store is closing"))

    async def _write(self, items: Sequence[_Item]) -> list[tuple[StoredEvent, bool] | Exception]:
        now = datetime.now(UTC)
        params = [
            {
                "id": event.id,
                "source": event.source,
                "external_id": external_id,
                "event_name": event.event_name,
                "user_id": event.user_id,
                "payload": event.payload,
                "metadata": event.metadata.model_dump(mode="json"),
                "created_at": event.created_at,
                "processed_at": event.processed_at,
                "stored_at": now,
                "published_at": None,
            }
            for event, external_id, _ in items
        ]
        async with self._store.transaction(write=True) as conn:
            if self._store.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key}
                )
            inserted = {row.id: int(row.position) for row in await conn.execute(self._stmt, params)}
            claimed: set[str] = set()
            results: list[tuple[StoredEvent, bool] | Exception | None] = []
            for event, external_id, _ in items:
                if event.id in inserted and event.id not in claimed:
                    claimed.add(event.id)
                    stored = StoredEvent(event, inserted[event.id], external_id, now, None)
                    results.append((stored, True))
                else:
                    results.append(None)
            missing = [items[i] for i, r in enumerate(results) if r is None]
            existing: dict[tuple[str, str | None, str], StoredEvent] = {}
            if missing:
                existing = await self._lookup(conn, missing)
        out: list[tuple[StoredEvent, bool] | Exception] = []
        for (event, external_id, _), result in zip(items, results, strict=True):
            if result is not None:
                out.append(result)
                continue
            key = (event.source, external_id, "") if external_id else ("", None, event.id)
            found = existing.get(key)
            if found is None:
                out.append(
                    DuplicateEventError(f"event id {event.id!r} is already used by another event")
                )
            else:
                out.append((found, False))
        return out

    async def _lookup(
        self, conn: Any, items: Sequence[_Item]
    ) -> dict[tuple[str, str | None, str], StoredEvent]:
        keyed = [(e.source, x) for e, x, _ in items if x is not None]
        by_id = [e.id for e, x, _ in items if x is None]
        found: dict[tuple[str, str | None, str], StoredEvent] = {}
        if keyed:
            where = sa.tuple_(t.c.source, t.c.external_id).in_(keyed)
            for row in await conn.execute(sa.select(*_COLUMNS).where(where)):
                found[(row.source, row.external_id, "")] = _stored(row._mapping)
        if by_id:
            for row in await conn.execute(sa.select(*_COLUMNS).where(t.c.id.in_(by_id))):
                found[("", None, row.id)] = _stored(row._mapping)
        return found
