"""Retention: finished deliveries older than ``delivery.retention_days`` go, with their
attempts and the bodies no delivery needs any more; pending ones and failed ones not yet
dead-lettered stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from eventmill import open_pubsub
from eventmill.delivery._ids import id_floor
from eventmill.delivery.builders import PayloadBuilders
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.dispatcher import Dispatcher
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.store import DeliveryStore
from eventmill.store import Store, open_store

OLD = datetime.now(UTC) - timedelta(days=40)
RECENT = datetime.now(UTC) - timedelta(days=2)


def _id_at(when: datetime, n: int) -> str:
    return id_floor("dlv", when)[:-4] + f"{n:04d}"


ROWS = {
    # name: (created, event, status, finished_at, dead_at)
    "old_ok": (OLD, "e1", "succeeded", OLD + timedelta(seconds=1), None),
    "old_dead": (OLD, "e1", "failed", OLD + timedelta(hours=30), OLD + timedelta(hours=30)),
    "old_undead": (OLD, "e1", "failed", OLD + timedelta(hours=30), None),
    "old_pending": (OLD, "e1", "pending", None, None),
    "old_ok_2": (OLD, "e2", "succeeded", OLD + timedelta(seconds=1), None),
    "old_retried_lately": (OLD, "e3", "succeeded", RECENT, None),
    "recent_ok": (RECENT, "e2", "succeeded", RECENT, None),
}
GONE = {"old_ok", "old_dead", "old_ok_2"}


async def _fill(store: Store) -> dict[str, str]:
    """The :data:`ROWS`, each to an endpoint of its own, with one attempt each."""
    ds = DeliveryStore(store)
    ids = {name: _id_at(row[0], i) for i, (name, row) in enumerate(ROWS.items())}
    endpoints = {
        name: (await ds.create_endpoint(url="https://x.example/", user_id=None)).id for name in ROWS
    }
    async with store.transaction(write=True) as conn:
        for event_id in ("e1", "e2", "e3"):
            await conn.execute(
                sa.text(
                    "INSERT INTO delivery_events (event_id, event_name, body, created_at) "
                    "VALUES (:e, 'x.y', :b, :t)"
                ),
                {"e": event_id, "b": b"{}", "t": OLD},
            )
        for name, (created, event_id, status, finished, dead) in ROWS.items():
            await conn.execute(
                sa.text(
                    "INSERT INTO deliveries (id, event_id, endpoint_id, event_name, status, "
                    "attempts, step, next_attempt_at, created_at, finished_at, dead_at) VALUES "
                    "(:id, :e, :ep, 'x.y', :s, 1, 1, :next, :c, :f, :d)"
                ),
                {
                    "id": ids[name],
                    "e": event_id,
                    "ep": endpoints[name],
                    "s": status,
                    "next": created if status == "pending" else None,
                    "c": created,
                    "f": finished,
                    "d": dead,
                },
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, outcome) "
                    "VALUES (:d, 1, :t, 'success')"
                ),
                {"d": ids[name], "t": created},
            )
    return ids


async def _remaining(store: Store) -> tuple[set[str], set[str], set[str]]:
    async with store.transaction(write=False) as conn:
        deliveries = {r[0] for r in await conn.execute(sa.text("SELECT id FROM deliveries"))}
        attempts = {
            r[0] for r in await conn.execute(sa.text("SELECT delivery_id FROM delivery_attempts"))
        }
        events = {r[0] for r in await conn.execute(sa.text("SELECT event_id FROM delivery_events"))}
    return deliveries, attempts, events


async def test_prune_deletes_old_finished_deliveries_in_batches(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        ids = await _fill(store)
        ds = DeliveryStore(store)
        cutoff = datetime.now(UTC) - timedelta(days=30)
        assert await ds.prune(cutoff, batch=2) == 2  # bounded batches
        assert await ds.prune(cutoff, batch=2) == 1
        assert await ds.prune(cutoff, batch=2) == 0
        deliveries, attempts, events = await _remaining(store)
        assert deliveries == {ids[n] for n in ROWS if n not in GONE}
        assert attempts == deliveries  # the attempts went with their deliveries
        # e1 and e2 still have deliveries (pending, undead, recent); e3 too (retried lately)
        assert events == {"e1", "e2", "e3"}
    finally:
        await store.close()


async def test_an_events_body_goes_with_its_last_delivery(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        ids = await _fill(store)
        async with store.transaction(write=True) as conn:
            # e1's other deliveries are finished and old now, e2's recent one too
            await conn.execute(
                sa.text(
                    "UPDATE deliveries SET status = 'succeeded', finished_at = :t, dead_at = :t "
                    "WHERE id IN (:a, :b, :c)"
                ),
                {"t": OLD, "a": ids["old_undead"], "b": ids["old_pending"], "c": "none"},
            )
        assert await DeliveryStore(store).prune(datetime.now(UTC) - timedelta(days=30)) == 5
        deliveries, _, events = await _remaining(store)
        assert deliveries == {ids["old_retried_lately"], ids["recent_ok"]}
        assert events == {"e2", "e3"}
    finally:
        await store.close()


async def test_the_dispatchers_retention_pass_follows_the_setting(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'events.db'}")
    bus = await open_pubsub("memory://")
    try:
        ids = await _fill(store)

        def dispatcher(days: float | None) -> Dispatcher:
            settings = DeliverySettings(retention_days=days, retention_batch=2)
            return Dispatcher(
                DeliveryStore(store),
                settings,
                PayloadBuilders(),
                DeliveryMetrics(CollectorRegistry()),
                lambda: bus,
            )

        assert await dispatcher(None).prune() == 0  # kept forever
        assert await dispatcher(60).prune() == 0  # nothing that old
        assert await dispatcher(30).prune() == len(GONE)  # batch after batch
        deliveries, _, _ = await _remaining(store)
        assert deliveries == {ids[n] for n in ROWS if n not in GONE}
    finally:
        await bus.close()
        await store.close()
