"""Idempotency-Key on POST /v1/events: a key names one request (per API key)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from fastapi import FastAPI

from eventmill.app import resources_of
from tests.ingest.support import drain_until_sentinel, gate_bus, running_app, settings_for

REPLAYED = "idempotent-replayed"


async def _key(app: FastAPI, *scopes: str) -> tuple[str, dict[str, str]]:
    """A new API key: its id and the Authorization header."""
    store = resources_of(app).store
    assert store is not None
    record, plaintext = await store.api_keys.create(f"t-{uuid.uuid4().hex[:6]}", set(scopes))
    return record.id, {"Authorization": f"Bearer {plaintext}"}


def _event(user: str = "u1", **extra: Any) -> dict[str, Any]:
    payload = {
        "user_id": user,
        "email": f"{user}@example.com",
        "name": user.upper(),
        "created_at": "2024-01-20T10:30:00Z",
    }
    return {"event_name": "user.created", "user_id": user, "payload": payload, **extra}


async def _stored_ids(app: FastAPI) -> list[str]:
    store = resources_of(app).store
    assert store is not None
    page = await store.events.query(source="internal", limit=1000)  # not the sentinels
    return [e.id for e in page.events]


async def test_a_replay_answers_exactly_what_the_first_request_was_answered(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        bus = resources_of(app).bus
        assert bus is not None
        sub = await bus.subscribe("events")
        _, auth = await _key(app, "publish")
        for body in (_event(), [_event("b1"), _event("b2")]):
            headers = {**auth, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
            first = await client.post("/v1/events", json=body, headers=headers)
            assert first.status_code == 200, first.text
            assert REPLAYED not in first.headers
            assert not any(e["duplicate"] for e in first.json()["events"])
            # the same body, keys reordered and spaced differently, is the same request
            same = orjson.dumps(orjson.loads(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)))
            for content in (orjson.dumps(body), b" " + same.replace(b",", b", ")):
                retry = await client.post("/v1/events", content=content, headers=headers)
                assert retry.status_code == first.status_code
                assert retry.content == first.content  # "duplicate" stays false, too
                assert retry.headers[REPLAYED] == "true"
        published = await drain_until_sentinel(bus, sub)
        assert len(published) == 3  # one event, then a batch of two: each once
        assert sorted(m.id for m in published) == sorted(await _stored_ids(app))
        await sub.close()


async def test_another_body_under_a_used_key_is_409_and_stores_and_publishes_nothing(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        bus = resources_of(app).bus
        assert bus is not None
        sub = await bus.subscribe("events")
        _, auth = await _key(app, "publish")
        headers = {**auth, "Idempotency-Key": "order-42"}
        first = await client.post("/v1/events", json=_event(), headers=headers)
        assert first.status_code == 200, first.text
        stored = await _stored_ids(app)
        published = await drain_until_sentinel(bus, sub)
        assert [m.id for m in published] == stored == first.json()["ids"]

        # the first event again, in an array, or with others after it: another request
        for other in (
            [_event()],
            [_event(), _event("u2")],
            _event("u2"),
            {**_event(), "payload": {**_event()["payload"], "name": "changed"}},
        ):
            r = await client.post("/v1/events", json=other, headers=headers)
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "idempotency_conflict"
            assert "24 h" in r.json()["message"]
            assert REPLAYED not in r.headers
        assert await _stored_ids(app) == stored
        assert await drain_until_sentinel(bus, sub) == []
        # the first body is still answered as before
        again = await client.post("/v1/events", json=_event(), headers=headers)
        assert again.content == first.content
        await sub.close()


async def test_keys_belong_to_one_api_key(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        _, mine = await _key(app, "publish")
        _, theirs = await _key(app, "publish")
        idem = {"Idempotency-Key": "shared-name"}
        a = await client.post("/v1/events", json=_event(), headers={**mine, **idem})
        b = await client.post("/v1/events", json=_event("u2"), headers={**theirs, **idem})
        assert a.status_code == b.status_code == 200
        assert a.json()["ids"] != b.json()["ids"]
        assert REPLAYED not in b.headers
        assert len(await _stored_ids(app)) == 2


async def test_concurrent_requests_with_one_key_store_once(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        bus = resources_of(app).bus
        assert bus is not None
        sub = await bus.subscribe("events")
        _, auth = await _key(app, "publish")
        headers = {**auth, "Idempotency-Key": "concurrent"}
        a, b = [_event("a1"), _event("a2")], [_event("b1"), _event("b2")]
        bodies = [a, b] * 6
        responses = await asyncio.gather(
            *(client.post("/v1/events", json=body, headers=headers) for body in bodies)
        )
        winners = [r for r in responses if r.status_code == 200]
        assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]
        assert len({r.content for r in winners}) == 1  # one answer, replayed to the others
        assert sum(REPLAYED not in r.headers for r in winners) == 1
        won = bodies[responses.index(winners[0])]
        for body, r in zip(bodies, responses, strict=True):
            assert (r.status_code == 200) == (body is won or body == won), r.text
        stored = await _stored_ids(app)
        assert stored == winners[0].json()["ids"]
        published = await drain_until_sentinel(bus, sub)
        assert [m.id for m in published] == stored
        await sub.close()


async def test_a_request_waits_for_the_key_s_holder_then_409_in_progress(
    tmp_path: Path, store_url: str
) -> None:
    """Another process holds the key (its lease is running): the request waits up to
    the request timeout, then answers 409 idempotency_in_progress; once the holder
    releases the key, the request runs."""
    from eventmill.ingest.idempotency import fingerprint
    from eventmill.store.idempotency import IdempotencyStore

    settings = settings_for(tmp_path, store_url, request_timeout_seconds=0.3)
    async with running_app(settings) as (app, client):
        store = resources_of(app).store
        assert store is not None
        owner, auth = await _key(app, "publish")
        keys = IdempotencyStore(store)
        body = _event()
        held = await keys.claim(
            owner, "held", fingerprint("POST /v1/events", body), lease=60, ttl=60
        )
        assert held.outcome == "owner"
        headers = {**auth, "Idempotency-Key": "held"}
        r = await client.post("/v1/events", json=body, headers=headers)
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "idempotency_in_progress"
        assert await _stored_ids(app) == []
        assert await keys.release(owner, "held", held.token)
        r = await client.post("/v1/events", json=body, headers=headers)
        assert r.status_code == 200, r.text


async def _rows(app: FastAPI) -> int:
    from eventmill.store.idempotency import idempotency_keys

    store = resources_of(app).store
    assert store is not None
    async with store.transaction(write=False) as conn:
        count = await conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys))
        return int(count.scalar_one())


async def test_a_key_is_forgotten_after_its_ttl_and_deleted(tmp_path: Path, store_url: str) -> None:
    settings = settings_for(tmp_path, store_url, idempotency_ttl_seconds=1)
    async with running_app(settings) as (app, client):
        _, auth = await _key(app, "publish")
        headers = {**auth, "Idempotency-Key": "short-lived"}
        first = await client.post("/v1/events", json=_event(), headers=headers)
        assert first.status_code == 200
        assert await _rows(app) == 1
        async with asyncio.timeout(30):  # hang guard: the cleanup runs every ttl (1 s)
            while await _rows(app):
                await asyncio.sleep(0.05)
        # forgotten: another body under the key is a new request
        other = await client.post("/v1/events", json=_event("u2"), headers=headers)
        assert other.status_code == 200, other.text
        assert REPLAYED not in other.headers
        assert len(await _stored_ids(app)) == 2


async def test_the_503_says_what_a_retry_of_that_request_does(
    tmp_path: Path, store_url: str
) -> None:
    settings = settings_for(tmp_path, store_url, request_timeout_seconds=0.3)
    async with running_app(settings) as (app, client):
        _, auth = await _key(app, "publish")
        bus = gate_bus(app)
        bus.close_gate()

        async def post(body: Any, **headers: str) -> httpx.Response:
            r = await client.post("/v1/events", json=body, headers={**auth, **headers})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "bus_unavailable"
            return r

        bare = await post([_event("n1"), _event("n2")])
        assert "would store its events again" in bare.json()["message"]
        assert "Idempotency-Key" in bare.json()["message"]
        ids = await post(_event("i1", id="evt_chosen_by_caller"))
        assert "answered as a duplicate" in ids.json()["message"]
        keyed = await post(_event("k1"), **{"Idempotency-Key": "bus-down"})
        assert "answered as a duplicate" in keyed.json()["message"]
        stored = await _stored_ids(app)
        assert len(stored) == 4

        # what the 503s said holds: the keyed retry answers the stored event, bus or not
        retry = await client.post(
            "/v1/events", json=_event("k1"), headers={**auth, "Idempotency-Key": "bus-down"}
        )
        assert retry.status_code == 200, retry.text
        assert retry.json()["events"][0]["duplicate"] is True
        assert retry.json()["ids"][0] in stored
        chosen = await client.post(
            "/v1/events", json=_event("i1", id="evt_chosen_by_caller"), headers=auth
        )
        assert chosen.json()["events"] == [{"id": "evt_chosen_by_caller", "duplicate": True}]
        assert len(await _stored_ids(app)) == 4
        bus.open_gate()


async def test_an_empty_key_is_422_and_stores_nothing(tmp_path: Path, store_url: str) -> None:
    """An empty Idempotency-Key was taken as none: a retry of that request stored its
    events again. The caller meant a key: 422 naming the header."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        _, auth = await _key(app, "publish")
        answer = await client.post(
            "/v1/events", json=_event(), headers={**auth, "Idempotency-Key": ""}
        )
        assert answer.status_code == 422, answer.text
        assert "idempotency-key" in answer.json()["message"].lower()
        assert await _stored_ids(app) == []
