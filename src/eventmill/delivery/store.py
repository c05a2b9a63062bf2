"""The delivery feature's data: endpoints, deliveries and attempts in the shared store.

Every method is one short transaction. The dispatcher's work is claimed here, endpoint
by endpoint: each endpoint's ``next_due_at`` says when its next delivery is due (every
write that makes a delivery due lowers it, in the same transaction), so a claim reads
the endpoints whose time has come from their own index, then takes each one's oldest
due deliveries (``ix_deliveries_endpoint_due``), as many as its lane has room for: the
claim never walks over the due deliveries of an endpoint it skips (a hanging one
whose lane is full), however many there are. Taking a delivery moves its
``next_attempt_at`` to the end of the lease and stamps it with the claim's token
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, on the endpoint rows and the deliveries,
so several instances never claim one delivery; SQLite serializes writers); an
endpoint left with nothing due gets ``next_due_at`` = its earliest ``next_attempt_at``
(leases included). A dispatcher that dies leaves the delivery due again when the lease
ends. Results are written only where the token still matches.

On PostgreSQL a writer lowers ``next_due_at`` with an unconditional update (it takes
the endpoint row's lock even when the value stays) after writing its deliveries, and
a claim locks the endpoint rows it reads (skipping locked ones): a claim therefore
never raises ``next_due_at`` past a delivery committed meanwhile. Endpoint rows are
locked in id order by writers, so writers never deadlock each other.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from eventmill.delivery._ids import id_floor, new_id, new_secret
from eventmill.delivery.signing import secret_key
from eventmill.delivery.tables import attempts as at
from eventmill.delivery.tables import deliveries as dt
from eventmill.delivery.tables import delivery_events as et
from eventmill.delivery.tables import endpoints as ept
from eventmill.events.registry import compile_pattern
from eventmill.store import Store
from eventmill.store.errors import InvalidCursorError

__all__ = [
    "MAX_LIMIT",
    "AttemptRecord",
    "Claim",
    "Claimed",
    "DeliveryRecord",
    "DeliveryStore",
    "EndpointRecord",
    "Outcome",
    "Page",
    "Retried",
    "Rotation",
    "Status",
]

MAX_LIMIT: Final = 1000
_CHUNK: Final = 500
_MAX_EXCLUDED: Final = 500
_CLAIM_ENDPOINTS: Final = 100
"""Most endpoints one claim serves."""

Status = Literal["pending", "succeeded", "failed"]


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _req_utc(value: datetime) -> datetime:
    out = _utc(value)
    assert out is not None
    return out


@functools.lru_cache(maxsize=4096)
def _pattern(pattern: str) -> re.Pattern[str]:
    return compile_pattern(pattern)


_CURSOR_ID: Final = re.compile(r"[a-z]{1,8}_[0-9A-Za-z]{1,56}")


def encode_cursor(last_id: str) -> str:
    """The opaque cursor continuing after ``last_id`` (lists are newest first)."""
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).rstrip(b"=").decode()


_LISTINGS: Final = {"ep": "endpoints", "dlv": "deliveries"}
"""The listing whose cursors hold ids of each prefix."""
_EVENTS_CURSOR: Final = re.compile(r"[ad]:[0-9]{1,19}")
"""What follows ``v1:`` in a cursor of the events listing (:mod:`eventmill.store.events`)."""


def decode_cursor(cursor: str, kind: str) -> str:
    """The id a cursor of the listing of ``kind`` ids (``ep``, ``dlv``) continues after;
    :class:`InvalidCursorError` if malformed or made by another listing (the id it
    holds has another prefix: every cursor ever made holds one)."""
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii"))
        version, _, last = raw.decode().partition(":")
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidCursorError("malformed cursor") from None
    other = None
    if version == "v1" and _EVENTS_CURSOR.fullmatch(last) is not None:
        other = "events"
    elif version != "v1" or _CURSOR_ID.fullmatch(last) is None:  # an id as new_id makes them
        raise InvalidCursorError("malformed cursor")
    elif not last.startswith(f"{kind}_"):
        other = _LISTINGS.get(last.partition("_")[0], "another")
    if other is not None:
        raise InvalidCursorError(
            f"this cursor belongs to the {other} listing, not the {_LISTINGS[kind]} one: "
            "pass the next_cursor of this listing's previous page"
        )
    return last


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint as stored (its secrets included: never put it in a log line)."""

    id: str
    user_id: str | None
    url: str
    description: str
    event_types: tuple[str, ...]
    headers: Mapping[str, str]
    rate_limit: float | None
    disabled: bool
    disabled_reason: str | None
    secret: str = field(repr=False)
    previous_secret: str | None = field(repr=False)
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime

    def matches(self, event_name: str) -> bool:
        """Whether the endpoint subscribes to ``event_name`` (no types: every event)."""
        if not self.event_types:
            return True
        return any(
            t == event_name or ("*" in t and _pattern(t).fullmatch(event_name) is not None)
            for t in self.event_types
        )

    def signing_keys(self, now: datetime) -> list[bytes]:
        """The HMAC keys that sign now: the secret, and the previous one during its overlap."""
        keys = [secret_key(self.secret)]
        expires = self.previous_secret_expires_at
        if self.previous_secret and expires is not None and expires > now:
            keys.append(secret_key(self.previous_secret))
        return keys


def _endpoint(row: Any) -> EndpointRecord:
    m = row._mapping
    return EndpointRecord(
        id=m["id"],
        user_id=m["user_id"],
        url=m["url"],
        description=m["description"],
        event_types=tuple(m["event_types"] or ()),
        headers=dict(m["headers"] or {}),
        rate_limit=m["rate_limit"],
        disabled=bool(m["disabled"]),
        disabled_reason=m["disabled_reason"],
        secret=m["secret"],
        previous_secret=m["previous_secret"],
        previous_secret_expires_at=_utc(m["previous_secret_expires_at"]),
        failing_since=_utc(m["failing_since"]),
        created_at=_req_utc(m["created_at"]),
        updated_at=_req_utc(m["updated_at"]),
    )


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery of one event to one endpoint."""

    id: str
    event_id: str
    endpoint_id: str
    user_id: str | None
    event_name: str
    status: Status
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    dead_at: datetime | None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :meth:`DeliveryStore.rotate_secret` did: the endpoint with its new secret, or,
    when ``refused_until`` is set, as it was (an earlier rotation's old secret signs
    until then)."""

    endpoint: EndpointRecord
    refused_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Retried:
    """What :meth:`DeliveryStore.retry_delivery` did: ``queued`` is False when an
    attempt was sending the delivery right then, or its endpoint is disabled
    (``endpoint_disabled``); nothing changed then, and ``delivery`` is it as it stands."""

    delivery: DeliveryRecord
    queued: bool
    endpoint_disabled: bool = False


_DELIVERY_COLUMNS: Final = (
    dt.c.id,
    dt.c.event_id,
    dt.c.endpoint_id,
    dt.c.user_id,
    dt.c.event_name,
    dt.c.status,
    dt.c.attempts,
    dt.c.next_attempt_at,
    dt.c.last_attempt_at,
    dt.c.last_status_code,
    dt.c.last_error,
    dt.c.created_at,
    dt.c.finished_at,
    dt.c.dead_at,
)


def _delivery(row: Any) -> DeliveryRecord:
    m = row._mapping
    return DeliveryRecord(
        id=m["id"],
        event_id=m["event_id"],
        endpoint_id=m["endpoint_id"],
        user_id=m["user_id"],
        event_name=m["event_name"],
        status=m["status"],
        attempts=int(m["attempts"]),
        next_attempt_at=_utc(m["next_attempt_at"]),
        last_attempt_at=_utc(m["last_attempt_at"]),
        last_status_code=m["last_status_code"],
        last_error=m["last_error"],
        created_at=_req_utc(m["created_at"]),
        finished_at=_utc(m["finished_at"]),
        dead_at=_utc(m["dead_at"]),
    )


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt: when, what came back, how long it took, what went wrong."""

    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    outcome: str
    error: str | None
    response_body: str | None


def _unstorable(*values: str | None) -> bool:
    """Whether a filter value holds a NUL, which no stored text can (PostgreSQL refuses
    it in a query): such a filter matches nothing."""
    return any(v is not None and "\x00" in v for v in values)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, newest first; pass ``next_cursor`` on to continue."""

    items: list[Any]
    next_cursor: str | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery this dispatcher holds the lease of."""

    id: str
    event_id: str
    endpoint_id: str
    event_name: str
    attempts: int
    step: int
    token: str


@dataclass(slots=True)
class Claim:
    """What one claim took: the deliveries, their endpoints and their events' bodies."""

    deliveries: list[Claimed]
    endpoints: dict[str, EndpointRecord]
    bodies: dict[str, bytes]
    more: bool = False
    """Whether more may be due now (a claim right away would find some)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, to be recorded (only while the claim's token holds)."""

    delivery_id: str
    token: str
    attempt: int
    """The delivery's attempt count after this one."""
    step: int
    """Attempts in the current round after this one."""
    started_at: datetime
    status_code: int | None
    latency_ms: float | None
    outcome: str
    """``success``, ``http_error``, ``gone``, ``timeout``, ``connection_error``, ``refused``,
    ``builder_error`` or ``endpoint_disabled`` (no attempt was made)."""
    error: str | None
    response_body: str | None
    status: Status
    """The delivery's status after it."""
    next_attempt_at: datetime | None
    """When it is due again (``None`` once succeeded or failed)."""
    attempted: bool = True
    """Whether a request was made (false: parked without an attempt)."""
    endpoint_id: str | None = None
    """The delivery's endpoint, if known (else the store looks it up)."""


@dataclass(frozen=True, slots=True)
class FanoutEvent:
    """An event the fan-out records deliveries for."""

    event_id: str
    event_name: str
    user_id: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery row the fan-out inserts (leased already when ``token`` is set)."""

    id: str
    event_id: str
    endpoint_id: str
    user_id: str | None
    event_name: str
    next_attempt_at: datetime
    token: str | None


# -- the store ----------------------------------------------------------------------------


def _finished(outcome: Outcome) -> datetime | None:
    """When a delivery that is done (succeeded or failed) was done: its last attempt's
    end (its start plus its latency), or its start for one parked without a request;
    ``None`` while it is pending."""
    if outcome.status == "pending":
        return None
    if outcome.latency_ms is None:
        return outcome.started_at
    return outcome.started_at + timedelta(milliseconds=outcome.latency_ms)


class DeliveryStore:
    """Endpoints, deliveries and attempts, in the store's database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pg = store.dialect == "postgresql"

    def _insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table) if self._pg else sqlite.insert(table)

    # -- endpoints' due time ----------------------------------------------------------

    def _lower_due_stmt(self, by_delivery: bool = False) -> Any:
        """``UPDATE`` lowering an endpoint's ``next_due_at`` to ``b_due``; the endpoint is
        ``b_ep``, or the one of delivery ``b_dlv`` (``by_delivery``)."""
        due = sa.bindparam("b_due", type_=ept.c.next_due_at.type)
        if by_delivery:
            target = ept.c.id == (
                sa.select(dt.c.endpoint_id)
                .where(dt.c.id == sa.bindparam("b_dlv"))
                .scalar_subquery()
            )
        else:
            target = ept.c.id == sa.bindparam("b_ep")
        if self._pg:  # always writes: takes the row lock (see the module docstring)
            return (
                sa.update(ept)
                .where(target)
                .values(next_due_at=sa.func.least(ept.c.next_due_at, due))
            )
        return (
            sa.update(ept)
            .where(target, sa.or_(ept.c.next_due_at.is_(None), ept.c.next_due_at > due))
            .values(next_due_at=due)
        )

    async def _lower_due(self, conn: AsyncConnection, due: Mapping[str, datetime]) -> None:
        """Lower each endpoint's ``next_due_at`` to its value in ``due`` (in id order)."""
        if due:
            params = [{"b_ep": e, "b_due": due[e]} for e in sorted(due)]
            await conn.execute(self._lower_due_stmt(), params)

    # -- endpoints --------------------------------------------------------------------

    async def create_endpoint(
        self,
        *,
        url: str,
        user_id: str | None,
        event_types: Sequence[str] = (),
        description: str = "",
        headers: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        disabled: bool = False,
    ) -> EndpointRecord:
        """Create an endpoint with a new secret; return it (secret included)."""
        now = _now()
        values = {
            "id": new_id("ep"),
            "user_id": user_id,
            "url": url,
            "description": description,
            "event_types": list(event_types),
            "headers": dict(headers or {}),
            "rate_limit": rate_limit,
            "disabled": disabled,
            "disabled_reason": "disabled on creation" if disabled else None,
            "secret": new_secret(),
            "previous_secret": None,
            "previous_secret_expires_at": None,
            "failing_since": None,
            "created_at": now,
            "updated_at": now,
        }
        async with self.store.transaction(write=True) as conn:
            await conn.execute(sa.insert(ept).values(values))
        return _endpoint(_Row(values))

    async def get_endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint with this id, or ``None``."""
        if _unstorable(endpoint_id):
            return None
        async with self.store.transaction(write=False) as conn:
            row = (await conn.execute(sa.select(ept).where(ept.c.id == endpoint_id))).first()
        return None if row is None else _endpoint(row)

    async def list_endpoints(
        self,
        *,
        user_id: str | None = None,
        disabled: bool | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Endpoints matching every filter given, newest first."""
        if _unstorable(user_id):
            return Page([], after, False)
        conditions: list[sa.ColumnElement[bool]] = []
        if user_id is not None:
            conditions.append(ept.c.user_id == user_id)
        if disabled is not None:
            conditions.append(ept.c.disabled == disabled)
        if after is not None:
            conditions.append(ept.c.id < decode_cursor(after, "ep"))
        stmt = sa.select(ept).where(*conditions).order_by(ept.c.id.desc()).limit(limit + 1)
        async with self.store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        items = [_endpoint(r) for r in rows[:limit]]
        cursor = encode_cursor(items[-1].id) if items else after
        return Page(items=items, next_cursor=cursor, has_more=len(rows) > limit)

    async def update_endpoint(
        self, endpoint_id: str, changes: Mapping[str, Any]
    ) -> EndpointRecord | None:
        """Apply ``changes`` (column → value); re-enabling clears the failure state."""
        values = dict(changes)
        if "event_types" in values:
            values["event_types"] = list(values["event_types"])
        if values.get("disabled") is False:
            values.update(disabled_reason=None, failing_since=None)
        elif values.get("disabled") is True:
            values.setdefault("disabled_reason", "disabled by request")
        values["updated_at"] = _now()
        async with self.store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(ept).where(ept.c.id == endpoint_id).values(values)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(sa.select(ept).where(ept.c.id == endpoint_id))).one()
        return _endpoint(row)

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Delete the endpoint with its deliveries and their attempts."""
        async with self.store.transaction(write=True) as conn:
            # their attempts go by the foreign key's ON DELETE CASCADE (indexed)
            await conn.execute(sa.delete(dt).where(dt.c.endpoint_id == endpoint_id))
            result = await conn.execute(sa.delete(ept).where(ept.c.id == endpoint_id))
        return bool(result.rowcount)

    async def rotate_secret(self, endpoint_id: str, overlap: float) -> Rotation | None:
        """Give the endpoint a new secret; the current one keeps signing for ``overlap`` s.
        While an earlier rotation's old secret still signs, a rotation with an overlap
        would cut that one off before its time (one old secret is kept): it is refused
        (``Rotation.refused_until``); one without an overlap cuts every old secret now."""
        now = _now()
        async with self.store.transaction(write=True) as conn:
            row = (await conn.execute(sa.select(ept).where(ept.c.id == endpoint_id))).first()
            if row is None:
                return None
            old = _endpoint(row)
            signing = old.previous_secret_expires_at
            if overlap > 0 and old.previous_secret and signing is not None and signing > now:
                return Rotation(old, refused_until=signing)
            values = {
                "secret": new_secret(),
                "previous_secret": old.secret if overlap > 0 else None,
                "previous_secret_expires_at": now + timedelta(seconds=overlap)
                if overlap > 0
                else None,
                "updated_at": now,
            }
            await conn.execute(sa.update(ept).where(ept.c.id == endpoint_id).values(values))
            row = (await conn.execute(sa.select(ept).where(ept.c.id == endpoint_id))).one()
        return Rotation(_endpoint(row))

    async def recover(
        self, endpoint_id: str, since: datetime, until: datetime | None = None
    ) -> int:
        """Make every failed delivery of the endpoint created in ``[since, until)`` due
        now, in a new round of the schedule; return how many."""
        conditions = [
            dt.c.endpoint_id == endpoint_id,
            dt.c.status == "failed",
            dt.c.id >= id_floor("dlv", since),
        ]
        if until is not None:
            conditions.append(dt.c.id < id_floor("dlv", until))
        now = _now()
        async with self.store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(dt).where(*conditions).values(_requeue_values(now))
            )
            if result.rowcount:
                await self._lower_due(conn, {endpoint_id: now})
        return int(result.rowcount)

    # -- fan-out ----------------------------------------------------------------------

    async def matching_endpoints(self, user_ids: Iterable[str]) -> list[EndpointRecord]:
        """Enabled endpoints of these users and those of every user (``user_id`` null)."""
        users = sorted(set(user_ids))
        stmts = [sa.select(ept).where(ept.c.user_id.is_(None), ept.c.disabled.is_(False))]
        for i in range(0, len(users), _CHUNK):
            chunk = users[i : i + _CHUNK]
            stmts.append(sa.select(ept).where(ept.c.user_id.in_(chunk), ept.c.disabled.is_(False)))
        found: list[EndpointRecord] = []
        async with self.store.transaction(write=False) as conn:
            for stmt in stmts:
                found.extend(_endpoint(r) for r in await conn.execute(stmt))
        return found

    async def record_fanout(
        self, events: Sequence[FanoutEvent], rows: Sequence[NewDelivery]
    ) -> list[NewDelivery]:
        """Insert the events' bodies and the delivery rows, skipping those already
        there (a redelivered event); return the rows inserted now."""
        if not rows:
            return []
        now = _now()
        event_values = [
            {
                "event_id": e.event_id,
                "event_name": e.event_name,
                "user_id": e.user_id,
                "body": e.body,
                "created_at": now,
            }
            for e in events
        ]
        row_values = [
            {
                "id": r.id,
                "event_id": r.event_id,
                "endpoint_id": r.endpoint_id,
                "user_id": r.user_id,
                "event_name": r.event_name,
                "status": "pending",
                "attempts": 0,
                "step": 0,
                "next_attempt_at": r.next_attempt_at,
                "lease_token": r.token,
                "created_at": now,
            }
            for r in rows
        ]
        ins_events = self._insert(et).on_conflict_do_nothing(index_elements=[et.c.event_id])
        ins_rows = (
            self._insert(dt)
            .on_conflict_do_nothing(index_elements=[dt.c.event_id, dt.c.endpoint_id])
            .returning(dt.c.id)
        )
        due: dict[str, datetime] = {}
        for r in rows:
            if r.endpoint_id not in due or r.next_attempt_at < due[r.endpoint_id]:
                due[r.endpoint_id] = r.next_attempt_at
        created: set[str] = set()
        async with self.store.transaction(write=True) as conn:
            for i in range(0, len(event_values), _CHUNK):
                await conn.execute(ins_events, event_values[i : i + _CHUNK])
            for i in range(0, len(row_values), _CHUNK):
                result = await conn.execute(ins_rows, row_values[i : i + _CHUNK])
                created.update(r[0] for r in result)
            await self._lower_due(conn, due)
        return [r for r in rows if r.id in created]

    # -- deliveries -------------------------------------------------------------------

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        """The delivery with this id, or ``None``."""
        if _unstorable(delivery_id):
            return None
        stmt = sa.select(*_DELIVERY_COLUMNS).where(dt.c.id == delivery_id)
        async with self.store.transaction(write=False) as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _delivery(row)

    async def attempts_of(self, delivery_id: str, limit: int = 100) -> list[AttemptRecord]:
        """The delivery's latest ``limit`` attempts, oldest first."""
        if _unstorable(delivery_id):
            return []
        stmt = (
            sa.select(at)
            .where(at.c.delivery_id == delivery_id)
            .order_by(at.c.attempt.desc())
            .limit(limit)
        )
        async with self.store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        out = [
            AttemptRecord(
                attempt=int(r.attempt),
                started_at=_req_utc(r.started_at),
                status_code=r.status_code,
                latency_ms=r.latency_ms,
                outcome=r.outcome,
                error=r.error,
                response_body=r.response_body,
            )
            for r in rows
        ]
        out.reverse()
        return out

    async def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        status: Status | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Deliveries matching every filter given, newest first."""
        if _unstorable(endpoint_id, event_id, user_id):
            return Page([], after, False)
        conditions: list[sa.ColumnElement[bool]] = []
        if endpoint_id is not None:
            conditions.append(dt.c.endpoint_id == endpoint_id)
        if event_id is not None:
            conditions.append(dt.c.event_id == event_id)
        if user_id is not None:
            conditions.append(dt.c.user_id == user_id)
        if status is not None:
            conditions.append(dt.c.status == status)
        if after is not None:
            conditions.append(dt.c.id < decode_cursor(after, "dlv"))
        stmt = (
            sa.select(*_DELIVERY_COLUMNS)
            .where(*conditions)
            .order_by(dt.c.id.desc())
            .limit(limit + 1)
        )
        async with self.store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        items = [_delivery(r) for r in rows[:limit]]
        cursor = encode_cursor(items[-1].id) if items else after
        return Page(items=items, next_cursor=cursor, has_more=len(rows) > limit)

    async def retry_delivery(self, delivery_id: str) -> Retried | None:
        """Make the delivery due now in a new round of the schedule (whatever its status),
        unless an attempt holds it right now or its endpoint is disabled: then nothing
        changes and ``queued`` is False. ``None`` if the delivery is unknown."""
        now = _now()
        enabled = (
            sa.select(ept.c.id)
            .where(ept.c.id == dt.c.endpoint_id, ept.c.disabled.is_(False))
            .exists()
        )
        async with self.store.transaction(write=True) as conn:
            queued = await conn.execute(
                sa.update(dt)
                .where(
                    dt.c.id == delivery_id,
                    sa.or_(
                        dt.c.status != "pending",
                        dt.c.lease_token.is_(None),
                        dt.c.next_attempt_at <= now,
                    ),
                    enabled,
                )
                .values(_requeue_values(now))
            )
            if queued.rowcount:
                await conn.execute(
                    self._lower_due_stmt(by_delivery=True), {"b_dlv": delivery_id, "b_due": now}
                )
            row = (
                await conn.execute(
                    sa.select(*_DELIVERY_COLUMNS, ept.c.disabled)
                    .join(ept, ept.c.id == dt.c.endpoint_id)
                    .where(dt.c.id == delivery_id)
                )
            ).first()
        if row is None:
            return None
        return Retried(_delivery(row), queued.rowcount > 0, bool(row.disabled))

    # -- the dispatcher ---------------------------------------------------------------

    async def claim(
        self,
        limit: int,
        *,
        lease_seconds: float,
        exclude: Sequence[str] = (),
        room: Callable[[EndpointRecord], int] | None = None,
    ) -> Claim:
        """Lease up to ``limit`` due deliveries: endpoint by endpoint (the one due
        longest first), up to ``room(endpoint)`` of each (its oldest due first),
        skipping the ``exclude``\\ d endpoints; return them with their endpoints and
        bodies. Its cost depends on the endpoints served and skipped and the deliveries
        taken, not on how many are due (see the module docstring)."""
        now = _now()
        token = new_id("ls")[3:]
        lease_end = now + timedelta(seconds=lease_seconds)
        wanted = max(1, min(limit, _CLAIM_ENDPOINTS))
        due_endpoints = (
            sa.select(ept).where(ept.c.next_due_at <= now).order_by(ept.c.next_due_at).limit(wanted)
        )
        if exclude:
            due_endpoints = due_endpoints.where(ept.c.id.not_in(list(exclude)[:_MAX_EXCLUDED]))
        if self._pg:
            due_endpoints = due_endpoints.with_for_update(skip_locked=True)
        recompute = (
            sa.update(ept)
            .where(ept.c.id == sa.bindparam("b_ep"))
            .values(
                next_due_at=sa.select(sa.func.min(dt.c.next_attempt_at))
                .where(dt.c.endpoint_id == sa.bindparam("b_ep2"), dt.c.next_attempt_at.is_not(None))
                .scalar_subquery()
            )
        )
        claimed: list[Claimed] = []
        endpoints: dict[str, EndpointRecord] = {}
        async with self.store.transaction(write=True) as conn:
            rows = (await conn.execute(due_endpoints)).all()
            more = len(rows) == wanted
            for row in rows:
                endpoint = _endpoint(row)
                n = min(limit - len(claimed), limit if room is None else room(endpoint))
                if len(claimed) >= limit:
                    more = True
                    break
                if n <= 0:
                    continue
                endpoints[endpoint.id] = endpoint
                taken = (
                    await conn.execute(self._claim_endpoint(endpoint.id, n, now, lease_end, token))
                ).all()
                claimed.extend(
                    Claimed(
                        r.id, r.event_id, r.endpoint_id, r.event_name, r.attempts, r.step, token
                    )
                    for r in taken
                )
                if len(taken) < n:
                    await conn.execute(recompute, {"b_ep": endpoint.id, "b_ep2": endpoint.id})
                else:
                    more = True
            _, bodies = await self._context(conn, claimed, endpoints=False)
        return Claim(deliveries=claimed, endpoints=endpoints, bodies=bodies, more=more)

    def _claim_endpoint(
        self, endpoint_id: str, n: int, now: datetime, lease_end: datetime, token: str
    ) -> Any:
        due = (
            sa.select(dt.c.id)
            .where(dt.c.endpoint_id == endpoint_id, dt.c.next_attempt_at <= now)
            .order_by(dt.c.next_attempt_at)
            .limit(n)
        )
        if self._pg:
            due = due.with_for_update(skip_locked=True)
        return (
            sa.update(dt)
            .where(dt.c.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=lease_end, lease_token=token)
            .returning(
                dt.c.id, dt.c.event_id, dt.c.endpoint_id, dt.c.event_name, dt.c.attempts, dt.c.step
            )
        )

    async def context(
        self, rows: Sequence[Claimed]
    ) -> tuple[dict[str, EndpointRecord], dict[str, bytes]]:
        """The endpoints and bodies of deliveries held otherwise (the fan-out's)."""
        async with self.store.transaction(write=False) as conn:
            return await self._context(conn, rows)

    async def _context(
        self, conn: AsyncConnection, rows: Sequence[Claimed], *, endpoints: bool = True
    ) -> tuple[dict[str, EndpointRecord], dict[str, bytes]]:
        endpoint_ids = sorted({r.endpoint_id for r in rows}) if endpoints else []
        event_ids = sorted({r.event_id for r in rows})
        found: dict[str, EndpointRecord] = {}
        bodies: dict[str, bytes] = {}
        for i in range(0, len(endpoint_ids), _CHUNK):
            stmt = sa.select(ept).where(ept.c.id.in_(endpoint_ids[i : i + _CHUNK]))
            for row in await conn.execute(stmt):
                found[row.id] = _endpoint(row)
        for i in range(0, len(event_ids), _CHUNK):
            stmt = sa.select(et.c.event_id, et.c.body).where(
                et.c.event_id.in_(event_ids[i : i + _CHUNK])
            )
            for row in await conn.execute(stmt):
                bodies[row.event_id] = bytes(row.body)
        return found, bodies

    async def release(self, claimed: Sequence[Claimed]) -> None:
        """Give deliveries back unattempted: due now, for any dispatcher."""
        if not claimed:
            return
        now = _now()
        stmt = (
            sa.update(dt)
            .where(
                dt.c.id == sa.bindparam("b_id"),
                dt.c.lease_token == sa.bindparam("b_token"),
                dt.c.status == "pending",
            )
            .values(next_attempt_at=now, lease_token=None)
        )
        params = [{"b_id": c.id, "b_token": c.token} for c in claimed]
        async with self.store.transaction(write=True) as conn:
            for i in range(0, len(params), _CHUNK):
                await conn.execute(stmt, params[i : i + _CHUNK])
            await self._lower_due(conn, dict.fromkeys({c.endpoint_id for c in claimed}, now))

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Record attempts and the deliveries' new state, where the claim still holds."""
        if not outcomes:
            return
        ids = sorted({o.delivery_id for o in outcomes})
        update = (
            sa.update(dt)
            .where(dt.c.id == sa.bindparam("b_id"), dt.c.lease_token == sa.bindparam("b_token"))
            .values(
                status=sa.bindparam("b_status"),
                attempts=sa.bindparam("b_attempts"),
                step=sa.bindparam("b_step"),
                next_attempt_at=sa.bindparam("b_next"),
                lease_token=None,
                last_attempt_at=sa.bindparam("b_last_at"),
                last_status_code=sa.bindparam("b_code"),
                last_error=sa.bindparam("b_error"),
                finished_at=sa.bindparam("b_finished"),
            )
        )
        async with self.store.transaction(write=True) as conn:
            existing: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                stmt = sa.select(dt.c.id).where(dt.c.id.in_(ids[i : i + _CHUNK]))
                existing.update(r[0] for r in await conn.execute(stmt))
            live = [o for o in outcomes if o.delivery_id in existing]
            attempt_rows = [
                {
                    "delivery_id": o.delivery_id,
                    "attempt": o.attempt,
                    "started_at": o.started_at,
                    "status_code": o.status_code,
                    "latency_ms": o.latency_ms,
                    "outcome": o.outcome,
                    "error": o.error,
                    "response_body": o.response_body,
                }
                for o in live
                if o.attempted
            ]
            if attempt_rows:
                await conn.execute(sa.insert(at), attempt_rows)
            params = [
                {
                    "b_id": o.delivery_id,
                    "b_token": o.token,
                    "b_status": o.status,
                    "b_attempts": o.attempt,
                    "b_step": o.step,
                    "b_next": o.next_attempt_at,
                    "b_last_at": o.started_at,
                    "b_code": o.status_code,
                    "b_error": o.error,
                    "b_finished": _finished(o),
                }
                for o in live
            ]
            # parked without a request: the last attempt's time and status code stay
            attempted = [p for p, o in zip(params, live, strict=True) if o.attempted]
            parked = [p for p, o in zip(params, live, strict=True) if not o.attempted]
            if attempted:
                await conn.execute(update, attempted)
            if parked:
                await conn.execute(
                    update.values(
                        last_attempt_at=dt.c.last_attempt_at,
                        last_status_code=dt.c.last_status_code,
                    ),
                    parked,
                )
            again: dict[str, datetime] = {}
            unknown: dict[str, datetime] = {}
            for o in live:
                if o.next_attempt_at is None:
                    continue
                key, into = (o.endpoint_id, again) if o.endpoint_id else (o.delivery_id, unknown)
                if key not in into or o.next_attempt_at < into[key]:
                    into[key] = o.next_attempt_at
            await self._lower_due(conn, again)
            if unknown:
                await conn.execute(
                    self._lower_due_stmt(by_delivery=True),
                    [{"b_dlv": d, "b_due": unknown[d]} for d in sorted(unknown)],
                )

    async def undead(self, limit: int = 100) -> list[DeliveryRecord]:
        """Failed deliveries not yet published to the dead-letter topic."""
        stmt = (
            sa.select(*_DELIVERY_COLUMNS)
            .where(dt.c.status == "failed", dt.c.dead_at.is_(None))
            .order_by(dt.c.id)
            .limit(limit)
        )
        async with self.store.transaction(write=False) as conn:
            return [_delivery(r) for r in await conn.execute(stmt)]

    async def mark_dead(self, ids: Sequence[str]) -> None:
        """Note that these failed deliveries were published to the dead-letter topic."""
        if not ids:
            return
        now = _now()
        async with self.store.transaction(write=True) as conn:
            for i in range(0, len(ids), _CHUNK):
                await conn.execute(
                    sa.update(dt)
                    .where(dt.c.id.in_(list(ids[i : i + _CHUNK])), dt.c.status == "failed")
                    .values(dead_at=now)
                )

    async def due_count(self, cap: int = 100_000) -> int:
        """How many deliveries are due now (counted up to ``cap``): those of the endpoints
        whose ``next_due_at`` has come (each range from ``ix_deliveries_endpoint_due``)."""
        now = _now()
        due = (
            sa.select(sa.literal(1))
            .select_from(ept.join(dt, dt.c.endpoint_id == ept.c.id))
            .where(ept.c.next_due_at <= now, dt.c.next_attempt_at <= now)
            .limit(cap)
            .subquery()
        )
        async with self.store.transaction(write=False) as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(due))).scalar_one()
            )

    # -- retention --------------------------------------------------------------------

    async def prune(self, before: datetime, *, batch: int = 1000) -> int:
        """Delete up to ``batch`` finished deliveries created before ``before`` (their
        attempts go by the foreign key's cascade), and the bodies of their events no
        delivery needs any more; return how many deliveries. Never a pending one, nor a
        failed one not yet published to the dead-letter topic. Indexed: it walks
        ``(status, id)`` from the oldest id, in one short transaction."""
        floor = id_floor("dlv", before)
        finished = sa.or_(dt.c.finished_at.is_(None), dt.c.finished_at < before)
        pick = [
            sa.select(dt.c.id, dt.c.event_id)
            .where(dt.c.status == "succeeded", dt.c.id < floor, finished)
            .order_by(dt.c.id)
            .limit(batch),
            sa.select(dt.c.id, dt.c.event_id)
            .where(dt.c.status == "failed", dt.c.id < floor, finished, dt.c.dead_at.is_not(None))
            .order_by(dt.c.id)
            .limit(batch),
        ]
        orphan = sa.delete(et).where(
            et.c.event_id.in_(sa.bindparam("b_events", expanding=True)),
            ~sa.exists().where(dt.c.event_id == et.c.event_id),
        )
        async with self.store.transaction(write=True) as conn:
            rows: list[Any] = []
            for stmt in pick:
                rows.extend((await conn.execute(stmt)).all())
            rows = sorted(rows, key=lambda r: r.id)[:batch]
            if not rows:
                return 0
            ids = [r.id for r in rows]
            await conn.execute(sa.delete(dt).where(dt.c.id.in_(ids)))
            await conn.execute(orphan, {"b_events": sorted({r.event_id for r in rows})})
        return len(rows)

    # -- endpoint health --------------------------------------------------------------

    async def mark_failing(self, endpoint_id: str, since: datetime) -> None:
        """Note the endpoint's first failure after a success (if not noted yet)."""
        async with self.store.transaction(write=True) as conn:
            await conn.execute(
                sa.update(ept)
                .where(ept.c.id == endpoint_id, ept.c.failing_since.is_(None))
                .values(failing_since=since)
            )

    async def mark_healthy(self, endpoint_id: str) -> None:
        """Clear the endpoint's failure state after a success."""
        async with self.store.transaction(write=True) as conn:
            await conn.execute(
                sa.update(ept)
                .where(ept.c.id == endpoint_id, ept.c.failing_since.is_not(None))
                .values(failing_since=None)
            )

    async def disable(
        self, endpoint_id: str, reason: str, *, failing_before: datetime | None = None
    ) -> EndpointRecord | None:
        """Disable the endpoint (only if still failing since before ``failing_before``,
        when given); return it if this call disabled it."""
        conditions = [ept.c.id == endpoint_id, ept.c.disabled.is_(False)]
        if failing_before is not None:
            conditions.append(ept.c.failing_since <= failing_before)
        async with self.store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(ept)
                .where(*conditions)
                .values(disabled=True, disabled_reason=reason[:500], updated_at=_now())
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(sa.select(ept).where(ept.c.id == endpoint_id))).one()
        return _endpoint(row)


def _requeue_values(now: datetime) -> dict[str, Any]:
    return {
        "status": "pending",
        "step": 0,
        "next_attempt_at": now,
        "lease_token": None,
        "finished_at": None,
        "dead_at": None,
    }


class _Row:
    """A dict seen as a row (``_mapping``), to build a record from inserted values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._mapping = values
