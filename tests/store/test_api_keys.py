"""ApiKeyStore against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa

from eventmill.errors import ConfigurationError
from eventmill.store import SCOPES, Store


async def test_created_key_verifies_and_only_its_hash_is_stored(store: Store) -> None:
    record, plaintext = await store.api_keys.create("billing", {"publish", "read"})
    assert plaintext.startswith(f"{record.prefix}_")
    assert record.prefix == f"em_{record.id}"
    assert record.scopes == {"publish", "read"}
    verified = await store.api_keys.verify(plaintext)
    assert verified is not None
    assert verified.id == record.id
    assert verified.name == "billing"
    async with store.transaction(write=False) as conn:
        row = (await conn.execute(sa.text("SELECT * FROM api_keys"))).one()._mapping
    secret = plaintext.split("_", 2)[2]
    assert secret not in str(dict(row))
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()


async def test_verify_records_last_use(store: Store) -> None:
    _, plaintext = await store.api_keys.create("svc", {"read"})
    await store.api_keys.verify(plaintext)
    (record,) = await store.api_keys.list()
    assert record.last_used_at is not None


async def test_wrong_malformed_and_unknown_keys_fail(store: Store) -> None:
    _, plaintext = await store.api_keys.create("svc", {"read"})
    prefix, secret = plaintext.rsplit("_", 1)[0], plaintext.split("_", 2)[2]
    wrong_secret = prefix + "_" + ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown_id = "em_000000000000_" + secret
    for bad in [wrong_secret, unknown_id, "", "em_", plaintext + "x", plaintext[:-1], "Bearer x"]:
        assert await store.api_keys.verify(bad) is None, bad


async def test_revoked_key_fails(store: Store) -> None:
    record, plaintext = await store.api_keys.create("svc", {"publish"})
    assert await store.api_keys.revoke(record.id)
    assert not await store.api_keys.revoke(record.id)
    assert not await store.api_keys.revoke("nope")
    assert await store.api_keys.verify(plaintext) is None
    got = await store.api_keys.get(record.id)
    assert got is not None
    assert got.revoked


async def test_list_orders_by_creation_and_filters_revoked(store: Store) -> None:
    a, _ = await store.api_keys.create("a", {"read"})
    b, _ = await store.api_keys.create("b", {"admin"})
    await store.api_keys.revoke(a.id)
    assert [r.id for r in await store.api_keys.list()] == [a.id, b.id]
    assert [r.id for r in await store.api_keys.list(include_revoked=False)] == [b.id]


async def test_many_keys_verify_concurrently(store: Store) -> None:
    created = [await store.api_keys.create(f"k{i}", {"read"}) for i in range(5)]
    results = await asyncio.gather(*(store.api_keys.verify(p) for _, p in created))
    assert [r.id if r else None for r in results] == [rec.id for rec, _ in created]


def test_scopes_and_admin_allows_everything() -> None:
    from datetime import UTC, datetime

    from eventmill.store import ApiKeyRecord

    now = datetime.now(UTC)
    reader = ApiKeyRecord("a" * 12, "r", "em_x", frozenset({"read"}), now, None, None)
    admin = ApiKeyRecord("b" * 12, "a", "em_y", frozenset({"admin"}), now, None, None)
    assert reader.allows("read")
    assert not reader.allows("publish")
    assert all(admin.allows(s) for s in SCOPES)


@pytest.mark.parametrize(
    ("name", "scopes"),
    [
        ("", {"read"}),
        ("x", set()),
        ("x", {"read", "write"}),
        ("x" * 201, {"read"}),
        ("a\nb", {"read"}),
        ("a\x00b", {"read"}),
        ("a\x7f", {"read"}),
    ],
)
async def test_create_rejects_bad_input(store: Store, name: str, scopes: set[str]) -> None:
    with pytest.raises(ConfigurationError):
        await store.api_keys.create(name, scopes)
