"""Two dispatcher processes on one PostgreSQL store: over 1,000 deliveries, each is
claimed by one of them and sent exactly once (FOR UPDATE SKIP LOCKED leases)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventmill.delivery._ids import new_id
from eventmill.delivery.store import DeliveryStore, FanoutEvent, NewDelivery
from eventmill.events import Event
from eventmill.store import open_store
from tests.delivery.threaded import CountingReceiver
from tests.ingest.support import pg_store_url

pytestmark = pytest.mark.slow

EVENTS = 200
ENDPOINTS = 5


async def _fill(store_url: str, rec: CountingReceiver) -> list[str]:
    store = await open_store(store_url)
    try:
        ds = DeliveryStore(store)
        endpoints = [
            await ds.create_endpoint(url=rec.url(f"/ep{i}"), user_id=None) for i in range(ENDPOINTS)
        ]
        events = [Event(event_name="order.created", user_id="u1") for _ in range(EVENTS)]
        now = datetime.now(UTC)
        rows = [
            NewDelivery(new_id("dlv"), e.id, ep.id, None, e.event_name, now, None)
            for e in events
            for ep in endpoints
        ]
        fan = [FanoutEvent(e.id, e.event_name, e.user_id, e.to_json()) for e in events]
        created = await ds.record_fanout(fan, rows)
        return [r.id for r in created]
    finally:
        await store.close()


async def _attempt_counts(store_url: str) -> dict[str, int]:
    store = await open_store(store_url)
    try:
        async with store.transaction(write=False) as conn:
            rows = await conn.execute(
                sa.text("SELECT delivery_id, count(*) FROM delivery_attempts GROUP BY delivery_id")
            )
            return {r[0]: int(r[1]) for r in rows}
    finally:
        await store.close()


def test_two_dispatchers_never_send_one_attempt_twice(tmp_path: Path) -> None:
    with pg_store_url() as store_url, CountingReceiver() as rec:
        ids = asyncio.run(_fill(store_url, rec))
        assert len(ids) == EVENTS * ENDPOINTS == 1000
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.delivery._dispatcher_child", store_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(2)
        ]
        try:
            outputs = [c.communicate(timeout=180)[0].decode() for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
        assert [c.returncode for c in children] == [0, 0], outputs
        with rec.lock:
            sent = sum(rec.requests.values())
            seen = set().union(*rec.ids.values())
        assert seen == set(ids)
        assert sent == 1000, f"{sent - 1000} attempts were sent twice"
        counts = asyncio.run(_attempt_counts(store_url))
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}
