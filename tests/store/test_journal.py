"""The journal: event hops and rejected webhooks, buffered, bounded and pruned."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from eventmill.store import Store
from eventmill.store.journal import Journal, event_hops, safe_headers


async def test_hops_are_written_in_order_and_read_back(store: Store) -> None:
    journal = store.journal
    journal.hop("evt_1", "received", source="razorpay")
    journal.hop("evt_2", "received", source="github")
    journal.hops_many(["evt_1", "evt_2"], "published", topic="events")
    assert await journal.hops("evt_1") == []  # buffered, not written yet
    await journal.flush()
    hops = await journal.hops("evt_1")
    assert [(h.hop, h.detail) for h in hops] == [
        ("received", {"source": "razorpay"}),
        ("published", {"topic": "events"}),
    ]
    assert hops[0].at <= hops[1].at
    assert [h.hop for h in await journal.hops("evt_2")] == ["received", "published"]


async def test_the_runner_flushes_without_being_asked(store: Store) -> None:
    journal = Journal(store, flush_interval=0.01)
    task = asyncio.create_task(journal.run())
    journal.hop("evt_run", "stored", position=7)
    async with asyncio.timeout(10):
        while not await journal.hops("evt_run"):
            await asyncio.sleep(0.01)
    await journal.close()
    await task


async def test_rejected_webhooks_keep_no_secret_and_page_newest_first(store: Store) -> None:
    journal = store.journal
    for i in range(3):
        journal.rejected(
            source="razorpay",
            status=401,
            reason="invalid_signature",
            message=f"attempt {i}",
            headers={
                "X-Razorpay-Signature": "deadbeef" * 8,
                "Authorization": "Bearer em_secret",
                "Content-Type": "application/json",
            },
        )
    journal.rejected(source="github", status=404, reason="unknown_source", message="m", headers={})
    await journal.flush()
    page = await journal.rejections(source="razorpay", limit=2)
    assert [r.message for r in page] == ["attempt 2", "attempt 1"]
    assert page[0].headers == {
        "x-razorpay-signature": "<redacted>",
        "authorization": "<redacted>",
        "content-type": "application/json",
    }
    rest = await journal.rejections(source="razorpay", before=page[-1].seq)
    assert [r.message for r in rest] == ["attempt 0"]
    assert len(await journal.rejections()) == 4


async def test_a_full_buffer_drops_and_counts_instead_of_growing(store: Store) -> None:
    journal = Journal(store, max_pending=3)
    for i in range(5):
        journal.hop(f"evt_{i}", "received")
    assert journal.dropped == 2
    await journal.flush()
    assert [h.event_id for i in range(5) for h in await journal.hops(f"evt_{i}")] == [
        "evt_0",
        "evt_1",
        "evt_2",
    ]


async def test_prune_removes_old_entries_and_caps_the_rejected_log(store: Store) -> None:
    journal = Journal(store, retention=timedelta(days=1), max_rejected=2)
    for i in range(4):
        journal.rejected(source="s", status=400, reason="r", message=str(i), headers={})
    journal.hop("evt_old", "received")
    await journal.flush()
    await journal.prune()
    assert [r.message for r in await journal.rejections()] == ["3", "2"]
    assert await journal.hops("evt_old")  # younger than the retention
    await Journal(store, retention=timedelta(0)).prune()
    assert await journal.hops("evt_old") == []
    assert await journal.rejections() == []


def test_safe_headers_redacts_every_credential_like_header() -> None:
    headers = {
        "Stripe-Signature": "t=1,v1=abc",
        "X-Hub-Signature-256": "sha256=abc",
        "webhook-signature": "v1,abc",
        "X-API-Key": "em_x",
        "Api-Key": "k",
        "Cookie": "a=b",
        "Authorization": "Bearer x",
        "X-Auth": "x",
        "X-Auth-Token": "x",
        "X-Password": "x",
        "X-Credentials": "x",
        "X-Hmac-SHA256": "x",
        "X-Webhook-Secret": "x",
        "X-Acme-Sig": "v1=abc",  # named by the caller: the header its source signs in
        "Content-Type": "application/json",
        "X-Request-Id": "req_1",
        "Accept": "*/*",
        "User-Agent": "Razorpay-Webhook/v1" + "x" * 500,
    }
    safe = safe_headers(headers, secret=("x-acme-sig",))
    assert {k for k, v in safe.items() if v != "<redacted>"} == {
        "content-type",
        "x-request-id",
        "accept",
        "user-agent",
    }
    assert len(safe["user-agent"]) == 256
    assert safe_headers({"X-Acme-Sig": "v1=abc"}) == {"x-acme-sig": "v1=abc"}


async def test_nul_characters_never_fail_a_flush_or_a_read(store: Store) -> None:
    journal = store.journal
    journal.rejected(
        source="a\x00b", status=404, reason="unknown_source", message="m\x00", headers={}
    )
    journal.hop("evt\x00", "received")
    journal.hop("evt_ok", "received")
    await journal.flush()
    assert journal.dropped == 0
    assert [h.hop for h in await journal.hops("evt_ok")] == ["received"]
    assert await journal.hops("evt\x00") == []
    assert await journal.rejections(source="a\x00b") == []
    [row] = await journal.rejections()
    assert row.source == "a\ufffdb"


async def test_buffered_hops_leave_nothing_for_the_cyclic_garbage_collector(
    store: Store,
) -> None:
    """Hops waiting for a flush (a realtime burst records one per event) hold no object
    the cyclic GC tracks: surviving its young collections, they would be promoted to
    its oldest generation and bring on a full collection, which with many open
    connections stalls the event loop for half a second."""
    journal = store.journal
    ids = [f"evt_gc_{i}" for i in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    journal.hops_many(ids, "pushed", connections=2)
    journal.hop("evt_gc_one", "stored", position=7, at=datetime(2024, 1, 1, tzinfo=UTC))
    gc.collect()  # untracks what holds nothing trackable
    assert len(gc.get_objects()) - before < 100
    await journal.flush()
    hops = await journal.hops("evt_gc_4999")
    assert [(h.hop, h.detail) for h in hops] == [("pushed", {"connections": 2})]
    hops = await journal.hops("evt_gc_one")
    assert [h.detail for h in hops] == [{"position": 7, "at": "2024-01-01T00:00:00Z"}]


async def test_a_detail_orjson_cannot_write_is_kept_as_text(store: Store) -> None:
    journal = store.journal
    journal.hop("evt_odd", "stored", value=Decimal("1.5"))
    await journal.flush()
    assert [h.detail for h in await journal.hops("evt_odd")] == [{"value": "1.5"}]


async def test_a_hop_time_is_stored_as_sqlalchemy_stores_it(store: Store) -> None:
    """Hops are written in one statement the database takes apart (not row by row
    through SQLAlchemy): their time must read back exactly, and compare with times
    SQLAlchemy writes (prune's cutoff; on SQLite a comparison of text)."""
    journal = store.journal
    at = datetime(2026, 12, 6, 15, 43, 41, 123456, tzinfo=UTC)
    journal._hops.append(("evt_time", at.timestamp(), "received", "{}"))
    journal._hops.append(("evt_time", at.replace(microsecond=0).timestamp(), "stored", "{}"))
    await journal.flush()
    hops = await journal.hops("evt_time")
    assert [(h.hop, h.at) for h in hops] == [
        ("received", at),
        ("stored", at.replace(microsecond=0)),
    ]
    async with store.transaction(write=False) as conn:
        later = await conn.execute(
            sa.select(sa.func.count())
            .select_from(event_hops)
            .where(event_hops.c.event_id == "evt_time", event_hops.c.at < at)
        )
        assert later.scalar_one() == 1  # the second, a fraction of a second earlier
