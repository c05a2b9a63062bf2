"""The operator's routes: replay, trace and the rejected-webhook log, over the app."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from eventmill.app import resources_of
from eventmill.events import Event
from tests.ingest.support import running_app, settings_for, store_url

__all__ = ["store_url"]  # the fixture: SQLite and PostgreSQL stores


async def _key(app: FastAPI, *scopes: str) -> dict[str, str]:
    store = resources_of(app).require_store()
    _, plaintext = await store.api_keys.create(f"ops-{uuid.uuid4().hex[:6]}", set(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


def _event(user: str, name: str = "order.placed") -> dict[str, Any]:
    return {"event_name": name, "user_id": user, "payload": {"n": user}}


async def test_replay_publishes_stored_events_in_order_from_a_position(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        admin = await _key(app, "admin")
        r = await client.post("/v1/events", json=[_event(f"u{i}") for i in range(5)], headers=admin)
        ids = r.json()["ids"]
        page = (await client.get("/v1/events", headers=admin)).json()["events"]
        positions = [e["position"] for e in page]
        bus = resources_of(app).require_bus()
        topic = f"replayed-{uuid.uuid4().hex[:8]}"
        sub = await bus.subscribe(topic, group="late-consumer")

        first = await client.post(
            "/v1/replay",
            json={"topic": topic, "after_position": positions[1], "limit": 2},
            headers=admin,
        )
        assert first.status_code == 200, first.text
        assert first.json() == {"published": 2, "last_position": positions[3], "complete": False}
        rest = await client.post(
            "/v1/replay",
            json={"topic": topic, "after_position": first.json()["last_position"]},
            headers=admin,
        )
        assert rest.json() == {"published": 1, "last_position": positions[4], "complete": True}

        got = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                msg = await anext(sub)
                msg.ack()
                got.append(msg)
        assert [m.id for m in got] == ids[2:]
        assert [int(m.metadata["eventmill_position"]) for m in got] == positions[2:]
        assert {m.metadata["eventmill_replayed"] for m in got} == {"1"}
        assert {m.metadata["eventmill_stored"] for m in got} == {"1"}
        assert Event.from_message(got[0]).payload == {"n": "u2"}
        await sub.close()


async def test_replay_filters_and_needs_admin(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        admin = await _key(app, "admin")
        publisher = await _key(app, "publish", "read")
        await client.post(
            "/v1/events",
            json=[
                _event("a", "order.placed"),
                _event("b", "order.paid"),
                _event("a", "order.paid"),
            ],
            headers=admin,
        )
        topic = f"replayed-{uuid.uuid4().hex[:8]}"
        denied = await client.post("/v1/replay", json={"topic": topic}, headers=publisher)
        assert denied.status_code == 403
        r = await client.post(
            "/v1/replay",
            json={"topic": topic, "user_id": "a", "event_name": "order.*"},
            headers=admin,
        )
        assert r.json()["published"] == 2
        bad = await client.post("/v1/replay", json={"topic": "no spaces"}, headers=admin)
        assert bad.status_code == 422
        assert bad.json()["error"] == "validation_failed"


@pytest.mark.parametrize(
    ("field", "when"),
    [("since", "0001-01-01T00:00:00+01:00"), ("until", "9999-12-31T23:00:00-05:00")],
)
async def test_a_replay_time_outside_the_utc_years_is_422(
    tmp_path: Path, store_url: str, field: str, when: str
) -> None:
    """In UTC it is in year 0 or 10000: converting it overflowed (a 500)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        admin = await _key(app, "admin")
        r = await client.post("/v1/replay", json={field: when}, headers=admin)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "validation_failed"
        assert r.json()["details"][0]["field"] == field
        assert "outside the years 1-9999 in UTC" in r.json()["details"][0]["message"]


async def test_trace_shows_stored_published_and_journal_hops(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        admin = await _key(app, "admin")
        posted = await client.post("/v1/events", json=_event("u1"), headers=admin)
        [event_id] = posted.json()["ids"]
        store = resources_of(app).require_store()
        async with asyncio.timeout(10):
            while (stored := await store.events.get(event_id)) is None or not stored.published_at:
                await asyncio.sleep(0.02)  # the publish marker writes in batches
        store.journal.hop(event_id, "handled", group="delivery")
        await store.journal.flush()
        r = await client.get(f"/v1/traces/{event_id}", headers=admin)
        assert r.status_code == 200, r.text
        hops = [h["hop"] for h in r.json()["hops"]]
        body = r.json()
        assert body["event_id"] == event_id
        assert body["user_id"] == "u1"
        assert hops == ["stored", "published", "handled"]
        assert body["hops"][2]["detail"] == {"group": "delivery"}
        missing = await client.get("/v1/traces/evt_nope", headers=admin)
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


async def test_rejected_webhooks_page_newest_first(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        admin = await _key(app, "admin")
        journal = resources_of(app).require_store().journal
        for i in range(3):
            journal.rejected(
                source="razorpay",
                status=401,
                reason="unauthorized",
                message=f"m{i}",
                headers={"X-Razorpay-Signature": "abc"},
            )
        await journal.flush()
        first = (
            await client.get("/v1/rejected-webhooks", params={"limit": 2}, headers=admin)
        ).json()
        assert [r["message"] for r in first["rejected"]] == ["m2", "m1"]
        assert first["rejected"][0]["headers"] == {"x-razorpay-signature": "<redacted>"}
        more = await client.get(
            "/v1/rejected-webhooks", params={"before": first["next_before"]}, headers=admin
        )
        assert [r["message"] for r in more.json()["rejected"]] == ["m0"]
        assert more.json()["next_before"] is None
