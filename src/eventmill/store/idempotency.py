"""Idempotency keys: what one request under a key was, and what it was answered.

A client names a request with a key (HTTP ``Idempotency-Key``); the key belongs to an
*owner* (the caller's API key id), so two callers never share one. The first request
under a key **claims** it with the request's fingerprint (a hash of what it asked for)
and a lease; when it is done it **completes** the key with its response (status and
body), or, if it failed in a way worth retrying (store or bus down), **releases** the
lease and records nothing. A later request under the key:

* with another fingerprint → ``conflict`` (nothing of it may run);
* with the same fingerprint, once the key is completed → ``replay`` (the response);
* while the first still holds its lease → ``busy`` (wait, or ask again);
* after a release, or once the lease ran out (the first one's process died) → it
  becomes the owner, with the same :attr:`Claim.token`, so what the earlier attempt
  stored can be found under keys derived from it.

Of any number of concurrent claims of one key exactly one becomes the owner. A key is
remembered for its ``ttl`` from the first claim; after that it is as if never used,
and :meth:`IdempotencyStore.delete_expired` removes it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from eventmill.store.errors import StoreError
from eventmill.store.tables import metadata

if TYPE_CHECKING:
    from eventmill.store.database import Database

__all__ = ["MAX_KEY_LENGTH", "Claim", "ClaimOutcome", "IdempotencyStore", "idempotency_keys"]

MAX_KEY_LENGTH: Final = 256
"""Longest idempotency key (and owner) the store holds."""

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("owner", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer(), nullable=True),
    sa.Column("response", sa.Text(), nullable=True),
    sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
"""One row per (owner, key); ``status`` and ``response`` once the request completed."""

t = idempotency_keys

ClaimOutcome = Literal["owner", "replay", "conflict", "busy"]
"""What a claim found (see :class:`Claim`)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`IdempotencyStore.claim`."""

    outcome: ClaimOutcome
    """``owner``: the caller runs the request, then completes or releases the key;
    ``replay``: answer :attr:`status` and :attr:`response`; ``conflict``: the key was
    used for another request; ``busy``: another request holds it until :attr:`locked_until`."""
    token: str
    """Names this use of the key (new when the key is first claimed or claimed again
    after it expired; the same across retries): derive the request's inner dedup keys
    from it."""
    status: int | None = None
    """``replay``: the recorded response's status."""
    response: bytes | None = None
    """``replay``: the recorded response's body."""
    locked_until: datetime | None = None
    """``busy``: when the holder's lease runs out."""


def _check(owner: str, key: str) -> None:
    for name, value in (("owner", owner), ("key", key)):
        if not 0 < len(value) <= MAX_KEY_LENGTH or "\x00" in value:
            raise StoreError(f"idempotency {name} must be 1-{MAX_KEY_LENGTH} characters, no NUL")


class IdempotencyStore:
    """Idempotency keys in the store's ``idempotency_keys`` table:
    ``IdempotencyStore(store)``."""

    def __init__(self, store: Database) -> None:
        self._store = store

    async def claim(
        self,
        owner: str,
        key: str,
        fingerprint: str,
        *,
        lease: float,
        ttl: float,
    ) -> Claim:
        """Claim ``key`` of ``owner`` for a request with ``fingerprint``.

        ``lease``: seconds the owner may hold the key before another request with the
        same fingerprint may take over (longer than the request can run). ``ttl``:
        seconds the key is remembered from its first claim. Raises
        :class:`~eventmill.store.errors.StoreUnavailableError` when the database is down.
        """
        _check(owner, key)
        now = _now()
        where = sa.and_(t.c.owner == owner, t.c.key == key)
        select = sa.select(t).where(where).with_for_update()
        dialect = self._store.dialect
        async with self._store.transaction(write=True) as conn:
            row = (await conn.execute(select)).first()
            if row is None:
                fresh = _fresh(fingerprint, now, lease, ttl)
                ins = postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)
                stmt = (
                    ins.values(owner=owner, key=key, **fresh)
                    .on_conflict_do_nothing()
                    .returning(t.c.token)
                )
                if (await conn.execute(stmt)).first() is not None:
                    return Claim("owner", fresh["token"])
                row = (await conn.execute(select)).first()  # a concurrent claim committed
                if row is None:  # pragma: no cover - rows are deleted only once expired
                    raise StoreError("idempotency key vanished while it was claimed")
            m = row._mapping
            expires_at = _utc(m["expires_at"])
            assert expires_at is not None
            if expires_at <= now:  # forgotten: a new use of the key
                fresh = _fresh(fingerprint, now, lease, ttl)
                await conn.execute(sa.update(t).where(where).values(**fresh))
                return Claim("owner", fresh["token"])
            token = str(m["token"])
            if m["fingerprint"] != fingerprint:
                return Claim("conflict", token)
            if m["status"] is not None:
                body = m["response"]
                return Claim(
                    "replay",
                    token,
                    status=int(m["status"]),
                    response=body.encode() if isinstance(body, str) else b"",
                )
            locked_until = _utc(m["locked_until"])
            if locked_until is not None and locked_until > now:
                return Claim("busy", token, locked_until=locked_until)
            await conn.execute(
                sa.update(t).where(where).values(locked_until=now + timedelta(seconds=lease))
            )
            return Claim("owner", token)

    async def complete(
        self, owner: str, key: str, token: str, status: int, response: bytes
    ) -> bool:
        """Record the response of the request that owns ``key`` (by ``token``); return
        whether the key was still that request's (it may have expired meanwhile)."""
        async with self._store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(t)
                .where(t.c.owner == owner, t.c.key == key, t.c.token == token)
                .values(status=status, response=response.decode(), locked_until=None)
            )
        return bool(result.rowcount == 1)

    async def release(self, owner: str, key: str, token: str) -> bool:
        """Drop the owner's lease without a response: the next request with the same
        fingerprint runs (and finds what this one stored). Return whether it held it."""
        async with self._store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(t)
                .where(
                    t.c.owner == owner,
                    t.c.key == key,
                    t.c.token == token,
                    t.c.status.is_(None),
                )
                .values(locked_until=None)
            )
        return bool(result.rowcount == 1)

    async def delete_expired(self, *, batch: int = 1000) -> int:
        """Delete keys past their ttl, about ``batch`` rows per transaction (ranges of
        the ``expires_at`` index, so no transaction holds the database for long);
        return how many."""
        total = 0
        while True:
            now = _now()
            edge_stmt = (
                sa.select(t.c.expires_at)
                .where(t.c.expires_at <= now)
                .order_by(t.c.expires_at)
                .offset(batch - 1)
                .limit(1)
            )
            async with self._store.transaction(write=True) as conn:
                edge = (await conn.execute(edge_stmt)).scalar_one_or_none()
                bound = now if edge is None else min(now, _utc(edge) or now)
                result = await conn.execute(sa.delete(t).where(t.c.expires_at <= bound))
            total += int(result.rowcount or 0)
            if edge is None:
                return total


def _fresh(fingerprint: str, now: datetime, lease: float, ttl: float) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "token": secrets.token_hex(8),
        "status": None,
        "response": None,
        "locked_until": now + timedelta(seconds=lease),
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
    }
