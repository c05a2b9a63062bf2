"""The audit handler's subscription: on sqlite:// the bus itself passes over the events
the ingest path stored; events from other paths still reach the handler."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest

from eventmill import Message, open_pubsub
from eventmill.app import resources_of
from eventmill.events import Event
from eventmill.ingest.audit import AuditSubscriber
from eventmill.web.seam import STORED_MARK
from tests import payloads
from tests.ingest.support import RAZORPAY_SECRET, running_app, settings_for


def _stored(i: int) -> Message:
    return Message(b"{}", {STORED_MARK: "1"}, id=f"stored-{i}")


@pytest.mark.parametrize("bus_kind", ["sqlite", "memory"])
async def test_audit_subscriber_hands_out_marked_messages_only_where_the_bus_cannot_skip(
    tmp_path: Path, bus_kind: str
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'bus.db'}?synchronous=normal"
        if bus_kind == "sqlite"
        else "memory://"
    )
    bus = await open_pubsub(url)
    sub = await AuditSubscriber(bus).subscribe("events", group="audit")
    await bus.publish("events", _stored(0), _stored(1))
    await bus.publish("events", Message(b"{}", id="direct"))
    await bus.publish("events", _stored(2))
    await bus.publish("events", Message(b"{}", id="sentinel"))
    got: list[str] = []
    async with asyncio.timeout(30):  # hang guard
        async for msg in sub:
            got.append(msg.id)
            msg.ack()
            if msg.id == "sentinel":
                break
    if bus_kind == "sqlite":
        assert got == ["direct", "sentinel"]
    else:  # the memory bus delivers them; the handler skips them itself
        assert got == ["stored-0", "stored-1", "direct", "stored-2", "sentinel"]
    await sub.close()
    await bus.close()


async def test_audit_on_the_sqlite_bus_never_leases_ingested_events(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    bus_url = f"sqlite:///{path}?synchronous=normal"
    bus = await open_pubsub(bus_url)  # create the tables, then log every audit lease
    await bus.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as con:
        con.execute("CREATE TABLE audit_leases (seq INTEGER)")
        con.execute(
            "CREATE TRIGGER log_audit_leases AFTER INSERT ON eventmill_leases"
            " WHEN NEW.grp = 'audit' BEGIN INSERT INTO audit_leases VALUES (NEW.seq); END"
        )
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    async with running_app(settings_for(tmp_path, store_url, bus_url=bus_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        for _ in range(5):
            body = payloads.dumps(payloads.RAZORPAY_SAMPLES["payment.captured"]())
            headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex}")
            resp = await client.post("/webhooks/razorpay", content=body, headers=headers)
            assert resp.status_code == 200
        direct = Event(event_name="inventory.reserved", source="inventory", payload={})
        await ctx.bus.publish("events", direct.to_message())
        async with asyncio.timeout(30):  # hang guard: the audit handler stores it
            while await ctx.store.events.get(direct.id) is None:
                await asyncio.sleep(0.05)
    with contextlib.closing(sqlite3.connect(path)) as con:
        leased = [seq for (seq,) in con.execute("SELECT seq FROM audit_leases")]
        ids = dict(con.execute("SELECT seq, id FROM eventmill_messages").fetchall())
        cursor = con.execute(
            "SELECT cursor FROM eventmill_groups WHERE topic = 'events' AND grp = 'audit'"
        ).fetchall()[0][0]
    assert [ids[seq] for seq in leased] == [direct.id], "only the direct event was handed out"
    assert cursor == max(ids)
