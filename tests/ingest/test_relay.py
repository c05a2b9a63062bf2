"""The outbox relay and the audit handler, inside the running app."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from eventmill import Message, open_pubsub
from eventmill.app import resources_of
from eventmill.events import Event
from eventmill.store import open_store
from tests.ingest.support import drain_until_sentinel, running_app, settings_for


def _event(i: int) -> Event:
    return Event(event_name="order.note", source="internal", user_id=f"u{i}", payload={"i": i})


async def test_relay_publishes_events_stored_before_start(tmp_path: Path, store_url: str) -> None:
    store = await open_store(store_url)
    stored = [await store.events.insert(_event(i), external_id=f"x{i}") for i in range(6)]
    await store.events.mark_published([stored[1][0].id])  # one was published already
    await store.close()

    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    settings = settings_for(
        tmp_path, store_url, bus_url=bus_url, audit_enabled=False, relay_batch_size=2
    )
    async with running_app(settings) as (app, _):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        # a new group replays the topic from its oldest message: everything the relay sent
        sub = await ctx.bus.subscribe("events", group=f"t{uuid.uuid4().hex[:8]}")
        async with asyncio.timeout(30):  # hang guard
            while await ctx.store.events.unpublished(limit=10, older_than=0):
                await asyncio.sleep(0.05)
        published = await drain_until_sentinel(ctx.bus, sub)
        # in batches of 2, oldest first, each exactly once
        assert [m.id for m in published] == [s.id for s, _ in stored if s.id != stored[1][0].id]
        await sub.close()


async def test_relay_publishes_what_the_bus_missed_while_running(
    tmp_path: Path, store_url: str
) -> None:
    settings = settings_for(
        tmp_path, store_url, relay_interval_seconds=0.1, relay_grace_seconds=0.0
    )
    async with running_app(settings) as (app, _):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        sub = await ctx.bus.subscribe("events")
        # as if the request that stored it had failed to publish (bus was down)
        missed, _ = await ctx.store.events.insert(_event(7), external_id="missed-1")
        async with asyncio.timeout(30):  # hang guard
            msg = await sub.__anext__()
        assert msg.id == missed.id
        assert Event.from_message(msg).payload == {"i": 7}
        async with asyncio.timeout(30):  # marked right after the bus accepted it
            while await ctx.store.events.unpublished(limit=1, older_than=0):
                await asyncio.sleep(0.05)
        await sub.close()


@pytest.mark.parametrize("bus", ["memory", "sqlite"])
async def test_audit_stores_events_published_by_other_paths(
    tmp_path: Path, store_url: str, bus: str
) -> None:
    bus_url = (
        f"sqlite:///{tmp_path / 'bus.db'}?synchronous=normal" if bus == "sqlite" else "memory://"
    )
    async with running_app(settings_for(tmp_path, store_url, bus_url=bus_url)) as (app, _):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        # a microservice using the library publishes straight to the bus
        direct = Event(event_name="inventory.reserved", source="inventory", payload={"sku": "A1"})
        await ctx.bus.publish("events", Message(b"not an event", id="junk-1"))
        await ctx.bus.publish("events", direct.to_message())
        await ctx.bus.publish("events", direct.to_message())  # redelivered/duplicated on the bus
        async with asyncio.timeout(30):  # hang guard
            while (got := await ctx.store.events.get(direct.id)) is None:
                await asyncio.sleep(0.05)
        assert got.event.event_name == "inventory.reserved"
        assert got.published_at is not None  # it crossed the bus: the relay must not resend it
        page = await ctx.store.events.query(source="inventory", limit=10)
        assert [s.id for s in page.events] == [direct.id]
        assert await ctx.store.events.get("junk-1") is None


async def test_audit_is_off_when_disabled(tmp_path: Path, store_url: str) -> None:
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    settings = settings_for(tmp_path, store_url, bus_url=bus_url, audit_enabled=False)
    async with running_app(settings) as (app, _):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        direct = Event(event_name="inventory.reserved", source="inventory", payload={})
        await ctx.bus.publish("events", direct.to_message())
    # the audit group was never created: a fresh bus connection shows no consumer took it
    bus = await open_pubsub(bus_url)
    sub = await bus.subscribe("events", group="audit")
    async with asyncio.timeout(30):
        msg = await sub.__anext__()
    assert msg.id == direct.id
    msg.ack()
    await bus.close()
