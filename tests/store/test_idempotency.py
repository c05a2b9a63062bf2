"""Idempotency keys in the store: claim, complete, release, expiry, concurrent claims."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from eventmill.store import Store
from eventmill.store.errors import StoreError
from eventmill.store.idempotency import IdempotencyStore, idempotency_keys


async def _count(store: Store) -> int:
    async with store.transaction(write=False) as conn:
        value = await conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys))
        return int(value.scalar_one())


async def test_a_key_is_claimed_once_then_replayed_or_in_conflict(store: Store) -> None:
    keys = IdempotencyStore(store)
    first = await keys.claim("owner1", "k", "fp-a", lease=60, ttl=3600)
    assert first.outcome == "owner"
    busy = await keys.claim("owner1", "k", "fp-a", lease=60, ttl=3600)
    assert busy.outcome == "busy"
    assert busy.locked_until is not None
    assert busy.locked_until > datetime.now(UTC)
    assert (await keys.claim("owner1", "k", "fp-b", lease=60, ttl=3600)).outcome == "conflict"
    # another owner's key of the same name is its own
    assert (await keys.claim("owner2", "k", "fp-b", lease=60, ttl=3600)).outcome == "owner"

    assert await keys.complete("owner1", "k", first.token, 200, b'{"ok": true}')
    replay = await keys.claim("owner1", "k", "fp-a", lease=60, ttl=3600)
    assert (replay.outcome, replay.status, replay.response) == ("replay", 200, b'{"ok": true}')
    assert replay.token == first.token
    assert (await keys.claim("owner1", "k", "fp-b", lease=60, ttl=3600)).outcome == "conflict"


async def test_a_released_or_lapsed_key_is_taken_over_with_the_same_token(store: Store) -> None:
    keys = IdempotencyStore(store)
    first = await keys.claim("o", "k", "fp", lease=60, ttl=3600)
    assert await keys.release("o", "k", first.token)
    again = await keys.claim("o", "k", "fp", lease=60, ttl=3600)
    assert (again.outcome, again.token) == ("owner", first.token)
    # a lease that has run out (its holder died) is taken over too
    lapsed = await keys.claim("o", "lapsed", "fp", lease=0, ttl=3600)
    taken = await keys.claim("o", "lapsed", "fp", lease=60, ttl=3600)
    assert (taken.outcome, taken.token) == ("owner", lapsed.token)
    # held or released, another body is a conflict (the key is used)
    assert (await keys.claim("o", "k", "other", lease=60, ttl=3600)).outcome == "conflict"
    assert await keys.release("o", "k", again.token)
    assert (await keys.claim("o", "k", "other", lease=60, ttl=3600)).outcome == "conflict"
    # a completed key is not released
    await keys.complete("o", "k", again.token, 409, b"{}")
    assert not await keys.release("o", "k", again.token)


async def test_an_expired_key_is_a_new_key_and_is_deleted(store: Store) -> None:
    keys = IdempotencyStore(store)
    old = await keys.claim("o", "k", "fp", lease=60, ttl=0.001)
    await keys.complete("o", "k", old.token, 200, b"{}")
    await keys.claim("o", "kept", "fp", lease=60, ttl=3600)
    async with asyncio.timeout(10):  # hang guard: 1 ms of ttl
        while datetime.now(UTC) <= (await _expiry(store, "k")):
            await asyncio.sleep(0.01)
    fresh = await keys.claim("o", "k", "another body", lease=60, ttl=0.001)
    assert fresh.outcome == "owner"
    assert fresh.token != old.token
    async with asyncio.timeout(10):
        while datetime.now(UTC) <= (await _expiry(store, "k")):
            await asyncio.sleep(0.01)
    assert await keys.delete_expired(batch=1) == 1
    assert await _count(store) == 1  # "kept"


async def test_expired_keys_are_deleted_in_batches(store: Store) -> None:
    keys = IdempotencyStore(store)
    for i in range(25):
        await keys.claim("o", f"k{i}", "fp", lease=60, ttl=0.001)
    await keys.claim("o", "kept", "fp", lease=60, ttl=3600)
    async with asyncio.timeout(10):
        while datetime.now(UTC) <= (await _expiry(store, "k24")):
            await asyncio.sleep(0.01)
    assert await keys.delete_expired(batch=10) == 25
    assert await _count(store) == 1


async def test_of_concurrent_claims_exactly_one_owns_the_key(store: Store) -> None:
    keys = IdempotencyStore(store)
    claims = await asyncio.gather(
        *(keys.claim("o", "race", f"fp{i % 2}", lease=60, ttl=3600) for i in range(20))
    )
    assert [c.outcome for c in claims].count("owner") == 1
    assert {c.outcome for c in claims} <= {"owner", "busy", "conflict"}
    assert len({c.token for c in claims}) == 1


@pytest.mark.parametrize("bad", ["", "x" * 257, "a\x00b"])
async def test_keys_the_store_cannot_hold_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(StoreError):
        await IdempotencyStore(store).claim("o", bad, "fp", lease=1, ttl=1)


async def _expiry(store: Store, key: str) -> datetime:
    t = idempotency_keys
    async with store.transaction(write=False) as conn:
        value = (await conn.execute(sa.select(t.c.expires_at).where(t.c.key == key))).scalar_one()
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
