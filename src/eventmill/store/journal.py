"""The journal: two bounded, append-only logs the operator reads when something went wrong.

* **Event hops** - what happened to one event, hop by hop (received, stored, published,
  handled by a group, pushed to connections); ``eventmill trace <event id>`` reads them
  beside the store's own records (the event row, its deliveries and attempts).
* **Rejected webhooks** - every webhook refused (bad signature, unknown source, bad
  body): source, reason, time and headers without secrets.

Writers never wait for the database: :meth:`Journal.hop` and :meth:`Journal.rejected`
append to an in-memory buffer of at most ``max_pending`` entries (when it is full the
entry is dropped and counted in :attr:`Journal.dropped`), and :meth:`Journal.run` writes
what is buffered in one statement per table every ``flush_interval`` seconds. Entries
older than ``retention`` are deleted, and the rejected log keeps at most ``max_rejected``
rows. The journal is diagnostics, not a guarantee: a crash loses at most one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import sqlalchemy as sa

from eventmill.store.database import Database
from eventmill.store.errors import StoreError
from eventmill.store.tables import Json

__all__ = ["Hop", "Journal", "RejectedWebhook", "event_hops", "metadata", "rejected_webhooks"]

_log = logging.getLogger("eventmill.store.journal")

metadata = sa.MetaData()

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

event_hops = sa.Table(
    "event_hops",
    metadata,
    sa.Column("seq", _Id, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("hop", sa.String(64), nullable=False),
    sa.Column("detail", Json, nullable=False),
    sa.Index("ix_event_hops_event_id_seq", "event_id", "seq"),
    sa.Index("ix_event_hops_at", "at"),
)

rejected_webhooks = sa.Table(
    "rejected_webhooks",
    metadata,
    sa.Column("seq", _Id, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer(), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("message", sa.String(500), nullable=False),
    sa.Column("headers", Json, nullable=False),
    sa.Index("ix_rejected_webhooks_source_seq", "source", "seq"),
    sa.Index("ix_rejected_webhooks_at", "at"),
)

_SECRET_HEADER_PARTS: Final = (
    "signature",
    "hmac",
    "auth",  # Authorization, Proxy-Authorization, X-Auth, X-Auth-Token
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "cookie",
    "key",  # X-API-Key, Api-Key
)
_MAX_HEADER_VALUE: Final = 256


def safe_headers(headers: Mapping[str, str], secret: Collection[str] = ()) -> dict[str, str]:
    """``headers`` without anything that could carry a secret, values cut to 256
    characters. Replaced by ``"<redacted>"``: every header named in ``secret``
    (lower-case names, e.g. the header a webhook source signs in, whatever it is
    called) and every header whose name holds signature, hmac, auth, secret, token,
    password, passwd, credential, cookie or key."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in secret or any(part in lower for part in _SECRET_HEADER_PARTS):
            out[lower] = "<redacted>"
        else:
            out[lower] = value[:_MAX_HEADER_VALUE]
    return out


@dataclass(frozen=True, slots=True)
class Hop:
    """One thing that happened to an event."""

    event_id: str
    at: datetime
    hop: str
    """``received``, ``stored``, ``published``, ``handled``, ``pushed``, …"""
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RejectedWebhook:
    """A webhook the service refused."""

    seq: int
    at: datetime
    source: str
    status: int
    reason: str
    """The error code answered (``invalid_signature``, ``unknown_source``, …)."""
    message: str
    headers: dict[str, str]
    """The request's headers, without secrets."""


def _text(value: str, limit: int) -> str:
    """``value`` as a text column can hold it: no NUL (PostgreSQL refuses it), cut."""
    return value.replace("\x00", "\ufffd")[:limit]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _detail(detail: Mapping[str, Any]) -> str:
    """A hop's detail as the JSON text it is stored as. Written when the hop is
    recorded: a buffered hop then holds no object the cyclic garbage collector tracks,
    so a burst of hops waiting for the next flush is never promoted to its oldest
    generation, whose full collections (which scan every object there, half a second
    with 10,000 WebSocket connections open) come sooner the more is promoted."""
    try:
        return orjson.dumps(detail, option=orjson.OPT_UTC_Z).decode()
    except TypeError:  # a value orjson cannot write: as text
        return orjson.dumps(detail, option=orjson.OPT_UTC_Z, default=str).decode()


_INSERT_HOPS: Final = {
    "sqlite": sa.text(
        "INSERT INTO event_hops (event_id, at, hop, detail) SELECT json_extract(value, '$[0]'),"
        " json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]')"
        " FROM json_each(:rows) ORDER BY key"
    ),
    "postgresql": sa.text(
        "INSERT INTO event_hops (event_id, at, hop, detail) SELECT h.value ->> 0,"
        " CAST(h.value ->> 1 AS timestamptz), h.value ->> 2, CAST(h.value ->> 3 AS json)"
        " FROM json_array_elements(CAST(:rows AS json)) WITH ORDINALITY AS h(value, n)"
        " ORDER BY h.n"
    ),
}
"""Buffered hops in one statement with one parameter, a JSON array of
``[event_id, at, hop, detail]`` rows (``at`` as the dialect stores it, ``detail`` as
JSON text) that the database takes apart: a flush of 10,000 hops costs a few
milliseconds of Python instead of ~20 µs a row through SQLAlchemy's per-row binding."""


def _stored_at(db: Database) -> Callable[[float], str]:
    """Writes a time (seconds since the epoch) as text the ``at`` column takes: its
    type's own bind processor's value where it has one (SQLite: the text SQLAlchemy
    stores, UTC without a zone), else ISO 8601 with the zone."""
    dialect = db.engine.sync_engine.dialect
    process = event_hops.c.at.type.dialect_impl(dialect).bind_processor(dialect)

    def stored(at: float) -> str:
        when = datetime.fromtimestamp(at, UTC)
        value = process(when) if process is not None else when
        return value if isinstance(value, str) else value.isoformat()

    return stored


class Journal:
    """The store's two diagnostic logs (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        max_pending: int = 10_000,
        flush_interval: float = 0.5,
        retention: timedelta = timedelta(days=7),
        max_rejected: int = 10_000,
    ) -> None:
        self._db = db
        self._stored_at = _stored_at(db)
        """Writes a hop's time as the ``at`` column takes it (the dialect's, once)."""
        self._max_pending = max_pending
        self._flush_interval = flush_interval
        self._retention = retention
        self._max_rejected = max_rejected
        self._hops: list[tuple[str, float, str, str]] = []
        """Recorded hops: ``(event_id, time.time(), hop, detail)``, the detail already
        JSON text (:func:`_detail`)."""
        self._rejected: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0
        """Entries dropped because the buffer was full (or the journal closed)."""

    # -- writing ----------------------------------------------------------------------

    def _room(self) -> bool:
        if self._closed or len(self._hops) + len(self._rejected) >= self._max_pending:
            self.dropped += 1
            return False
        return True

    def hop(self, event_id: str, hop: str, **detail: Any) -> None:
        """Record that ``hop`` happened to ``event_id`` (never waits; may drop)."""
        if self._room():
            self._hops.append((event_id, time.time(), hop, _detail(detail)))

    def hops_many(self, event_ids: Sequence[str], hop: str, **detail: Any) -> None:
        """Record one ``hop`` for each of ``event_ids``."""
        now, written = time.time(), _detail(detail)
        for event_id in event_ids:
            if self._room():
                self._hops.append((event_id, now, hop, written))

    def rejected(
        self,
        *,
        source: str,
        status: int,
        reason: str,
        message: str,
        headers: Mapping[str, str],
        secret_headers: Collection[str] = (),
    ) -> None:
        """Record a refused webhook; its headers are stored without secrets (see
        :func:`safe_headers`; ``secret_headers`` names, in lower case, the ones the
        source signs with)."""
        if self._room():
            self._rejected.append(
                {
                    "at": datetime.now(UTC),
                    "source": _text(source, 64),
                    "status": status,
                    "reason": _text(reason, 64),
                    "message": _text(message, 500),
                    "headers": safe_headers(headers, secret_headers),
                }
            )

    async def flush(self) -> None:
        """Write everything buffered now (errors are logged; the entries are dropped)."""
        pending, self._hops = self._hops, []
        rejected, self._rejected = self._rejected, []
        if not pending and not rejected:
            return
        stored_at = self._stored_at
        times: dict[float, str] = {}  # a burst's hops share their time
        hops = [  # made into rows here, not in the request that recorded them
            (
                _text(event_id, 128),
                times.get(at) or times.setdefault(at, stored_at(at)),
                _text(hop, 64),
                detail,
            )
            for event_id, at, hop, detail in pending
        ]
        try:
            async with self._db.transaction(write=True) as conn:
                if hops:
                    rows = {"rows": orjson.dumps(hops).decode()}
                    await conn.execute(_INSERT_HOPS[self._db.dialect], rows)
                if rejected:
                    await conn.execute(rejected_webhooks.insert(), rejected)
        except StoreError as exc:
            self.dropped += len(hops) + len(rejected)
            _log.warning("journal: %d entries not written: %s", len(hops) + len(rejected), exc)

    async def prune(self) -> None:
        """Delete entries older than ``retention``; keep at most ``max_rejected`` rejections."""
        cutoff = datetime.now(UTC) - self._retention
        async with self._db.transaction(write=True) as conn:
            await conn.execute(sa.delete(event_hops).where(event_hops.c.at < cutoff))
            await conn.execute(sa.delete(rejected_webhooks).where(rejected_webhooks.c.at < cutoff))
            newest = (
                await conn.execute(sa.select(sa.func.max(rejected_webhooks.c.seq)))
            ).scalar_one_or_none()
            if newest is not None and newest > self._max_rejected:
                floor = int(newest) - self._max_rejected
                await conn.execute(
                    sa.delete(rejected_webhooks).where(rejected_webhooks.c.seq <= floor)
                )

    async def run(self, *, prune_every: float = 3600.0) -> None:
        """Flush every ``flush_interval`` while entries arrive, prune every
        ``prune_every`` seconds, until :meth:`close`."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not self._closed:
            if loop.time() >= next_prune:
                try:
                    await self.prune()
                except StoreError as exc:
                    _log.warning("journal: prune failed: %s", exc)
                next_prune = loop.time() + prune_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval)
            await self.flush()

    async def close(self) -> None:
        """Stop accepting entries and write what is buffered."""
        self._closed = True
        self._wake.set()
        await self.flush()

    # -- reading ----------------------------------------------------------------------

    async def hops(self, event_id: str, *, limit: int = 1000) -> list[Hop]:
        """The hops recorded for ``event_id``, oldest first (flushed ones only)."""
        if "\x00" in event_id:
            return []  # no stored id holds one
        stmt = (
            sa.select(event_hops.c.event_id, event_hops.c.at, event_hops.c.hop, event_hops.c.detail)
            .where(event_hops.c.event_id == event_id)
            .order_by(event_hops.c.seq)
            .limit(limit)
        )
        async with self._db.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [Hop(r.event_id, _utc(r.at), r.hop, dict(r.detail)) for r in rows]

    async def rejections(
        self, *, source: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[RejectedWebhook]:
        """Rejected webhooks, newest first; ``before`` is a ``seq`` to page from."""
        if source is not None and "\x00" in source:
            return []  # no stored source holds one
        t = rejected_webhooks
        stmt = sa.select(t).order_by(t.c.seq.desc()).limit(max(1, min(limit, 1000)))
        if source is not None:
            stmt = stmt.where(t.c.source == source)
        if before is not None:
            stmt = stmt.where(t.c.seq < before)
        async with self._db.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            RejectedWebhook(
                int(r.seq), _utc(r.at), r.source, r.status, r.reason, r.message, dict(r.headers)
            )
            for r in rows
        ]
