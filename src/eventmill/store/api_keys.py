"""API keys for services and operators: stored hashed, shown once, scoped, revocable.

A key reads ``em_<id>_<secret>``: ``id`` is 12 hex characters (public, the lookup key),
``secret`` 43 URL-safe characters (256 random bits). Only SHA-256 of the secret is
stored; a high-entropy secret needs no slow hash. Verification compares digests in
constant time and does the same work for unknown ids.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from eventmill.errors import ConfigurationError
from eventmill.store.tables import api_keys as t

if TYPE_CHECKING:
    from eventmill.store.database import Database

__all__ = ["SCOPES", "ApiKeyRecord", "ApiKeyStore", "check_key_name"]

SCOPES: Final = frozenset({"publish", "read", "admin"})
"""``publish``: POST events; ``read``: query any event; ``admin``: everything."""

_KEY_RE: Final = re.compile(r"em_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_DUMMY_HASH: Final = hashlib.sha256(b"eventmill-no-such-key").hexdigest()
_LAST_USED_RESOLUTION: Final = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key (never its secret)."""

    id: str
    """Public id (12 hex characters)."""
    name: str
    """Human-readable name given at creation."""
    prefix: str
    """``em_<id>``: the start of the plaintext key, safe to show."""
    scopes: frozenset[str]
    """Granted scopes (subset of :data:`SCOPES`)."""
    created_at: datetime
    """Creation time (UTC)."""
    revoked_at: datetime | None
    """Revocation time, or ``None`` while the key is valid."""
    last_used_at: datetime | None
    """Last successful verification (updated at most once a minute), or ``None``."""

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def allows(self, scope: str) -> bool:
        """Whether the key grants ``scope`` (``admin`` grants every scope)."""
        return scope in self.scopes or "admin" in self.scopes


def check_key_name(name: str) -> None:
    """Raise :class:`~eventmill.ConfigurationError` unless ``name`` can name a key: 1-200
    characters, no control character (a line break or NUL would break every listing of
    the keys, and PostgreSQL refuses NUL in text)."""
    if not name or len(name) > 200:
        raise ConfigurationError("API key name must be 1-200 characters")
    control = _CONTROL.search(name)
    if control is not None:
        raise ConfigurationError(
            f"API key name must not hold control characters (it holds {control.group()!r} "
            f"at {control.start()})"
        )


def _record(row: Any) -> ApiKeyRecord:
    m = row._mapping
    created_at = _utc(m["created_at"])
    assert created_at is not None
    return ApiKeyRecord(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        scopes=frozenset(m["scopes"]),
        created_at=created_at,
        revoked_at=_utc(m["revoked_at"]),
        last_used_at=_utc(m["last_used_at"]),
    )


class ApiKeyStore:
    """API keys in the store's ``api_keys`` table. Get it as ``store.api_keys``."""

    def __init__(self, store: Database) -> None:
        self._store = store

    async def create(self, name: str, scopes: Iterable[str]) -> tuple[ApiKeyRecord, str]:
        """Create a key; return its record and the plaintext key (shown this once only).

        Raises :class:`~eventmill.ConfigurationError` for a name :func:`check_key_name`
        refuses, no scopes or an unknown scope.
        """
        scope_set = frozenset(scopes)
        check_key_name(name)
        if not scope_set:
            raise ConfigurationError("an API key needs at least one scope")
        unknown = scope_set - SCOPES
        if unknown:
            raise ConfigurationError(
                f"unknown API key scope(s) {sorted(unknown)}; use {sorted(SCOPES)}"
            )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=key_id,
            name=name,
            prefix=f"em_{key_id}",
            scopes=scope_set,
            created_at=_now(),
            revoked_at=None,
            last_used_at=None,
        )
        async with self._store.transaction(write=True) as conn:
            await conn.execute(
                sa.insert(t).values(
                    id=record.id,
                    name=record.name,
                    prefix=record.prefix,
                    hash=_hash(secret),
                    scopes=sorted(scope_set),
                    created_at=record.created_at,
                )
            )
        return record, f"em_{key_id}_{secret}"

    async def verify(self, plaintext: str) -> ApiKeyRecord | None:
        """Return the record of a valid, unrevoked key, else ``None`` (never raises for
        a wrong key; raises StoreUnavailableError when the database is down)."""
        match = _KEY_RE.fullmatch(plaintext) if isinstance(plaintext, str) else None
        if match is None:
            return None
        key_id, secret = match.groups()
        async with self._store.transaction(write=False) as conn:
            row = (await conn.execute(sa.select(t).where(t.c.id == key_id))).first()
        stored_hash = _DUMMY_HASH if row is None else str(row._mapping["hash"])
        ok = hmac.compare_digest(_hash(secret), stored_hash)
        if row is None or not ok:
            return None
        record = _record(row)
        if record.revoked:
            return None
        now = _now()
        if record.last_used_at is None or now - record.last_used_at >= _LAST_USED_RESOLUTION:
            async with self._store.transaction(write=True) as conn:
                await conn.execute(sa.update(t).where(t.c.id == key_id).values(last_used_at=now))
        return record

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key; return ``False`` if it is unknown or already revoked."""
        async with self._store.transaction(write=True) as conn:
            result = await conn.execute(
                sa.update(t)
                .where(t.c.id == key_id, t.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        return result.rowcount == 1

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """Return a key's record (revoked or not), or ``None``."""
        async with self._store.transaction(write=False) as conn:
            row = (await conn.execute(sa.select(t).where(t.c.id == key_id))).first()
        return None if row is None else _record(row)

    async def list(self, *, include_revoked: bool = True) -> list[ApiKeyRecord]:
        """Return all keys, oldest first."""
        stmt = sa.select(t).order_by(t.c.created_at, t.c.id)
        if not include_revoked:
            stmt = stmt.where(t.c.revoked_at.is_(None))
        async with self._store.transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(r) for r in rows]
