"""POST /v1/events and GET /v1/events[/{id}] through real HTTP requests."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI

from eventmill.app import resources_of
from eventmill.events import Event
from tests.ingest.support import (
    drain_until_sentinel,
    events_table_locked,
    gate_bus,
    running_app,
    settings_for,
)


async def _key(app: FastAPI, *scopes: str) -> dict[str, str]:
    ctx = resources_of(app)
    assert ctx.store is not None
    _, plaintext = await ctx.store.api_keys.create(f"test-{uuid.uuid4().hex[:6]}", set(scopes))
    return {"Authorization": f"Bearer {plaintext}"}


def _event(name: str = "user.created", user: str = "u1", **extra: Any) -> dict[str, Any]:
    payload = {
        "user_id": user,
        "email": f"{user}@example.com",
        "name": user.upper(),
        "created_at": "2024-01-20T10:30:00Z",
    }
    return {"event_name": name, "user_id": user, "payload": payload, **extra}


async def test_publish_one_and_a_batch(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        sub = await ctx.bus.subscribe("events")
        key = await _key(app, "publish", "read")

        one = await client.post("/v1/events", json=_event(), headers=key)
        assert one.status_code == 200, one.text
        [one_id] = one.json()["ids"]
        assert one.json()["events"] == [{"id": one_id, "duplicate": False}]

        batch = [_event(user=f"u{i}") for i in range(5)]
        r = await client.post("/v1/events", json=batch, headers=key)
        assert r.status_code == 200, r.text
        batch_ids = r.json()["ids"]
        assert len(set(batch_ids)) == 5

        published = await drain_until_sentinel(ctx.bus, sub)
        assert [m.id for m in published] == [one_id, *batch_ids]
        assert [m.metadata["partition_key"] for m in published[1:]] == [f"u{i}" for i in range(5)]
        first = Event.from_message(published[0])
        assert first.source == "internal"
        assert first.event_name == "user.created"

        got = await client.get(f"/v1/events/{one_id}", headers=key)
        assert got.status_code == 200
        assert got.json()["payload"]["email"] == "u1@example.com"
        # marked published by the marker's next round (batched across requests): the
        # message on the bus can come before it
        async with asyncio.timeout(30):  # hang guard
            while got.json()["published_at"] is None:
                await asyncio.sleep(0.05)
                got = await client.get(f"/v1/events/{one_id}", headers=key)
        await sub.close()


async def test_published_messages_carry_their_store_position(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        sub = await ctx.bus.subscribe("events")
        key = await _key(app, "publish", "read")
        r = await client.post(
            "/v1/events", json=[_event(user=f"p{i}") for i in range(3)], headers=key
        )
        assert r.status_code == 200, r.text
        published = await drain_until_sentinel(ctx.bus, sub)
        page = await client.get("/v1/events", params={"limit": 10}, headers=key)
        positions = {e["id"]: e["position"] for e in page.json()["events"]}
        assert [int(m.metadata["eventmill_position"]) for m in published] == [
            positions[i] for i in r.json()["ids"]
        ]
        await sub.close()


async def test_batch_on_a_slow_bus_is_503_and_every_event_is_relayed(
    tmp_path: Path, store_url: str
) -> None:
    timeout = 0.3
    settings = settings_for(
        tmp_path,
        store_url,
        request_timeout_seconds=timeout,
        relay_interval_seconds=0.1,
        relay_grace_seconds=0.2,
    )
    async with running_app(settings) as (app, client):
        ctx = resources_of(app)
        assert ctx.store is not None
        bus = gate_bus(app)
        sub = await bus.subscribe("events")
        key = {**await _key(app, "publish"), "Idempotency-Key": "slow-bus-batch"}
        batch = [_event(user=f"s{i}") for i in range(3)]

        bus.close_gate()  # publish no longer returns
        r = await client.post("/v1/events", json=batch, headers=key)
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "bus_unavailable"
        assert "stored" in r.json()["message"]
        pending = await ctx.store.events.unpublished(limit=10, older_than=0)
        stored = {str(p.event.user_id): p.id for p in pending}
        assert sorted(stored) == ["s0", "s1", "s2"]  # the whole batch

        # the retry (same Idempotency-Key) answers the stored events, bus or no bus
        retry = await client.post("/v1/events", json=batch, headers=key)
        assert retry.status_code == 200, retry.text
        assert retry.json()["ids"] == [stored[f"s{i}"] for i in range(3)]
        assert all(e["duplicate"] for e in retry.json()["events"])

        bus.open_gate()  # the relay publishes all three, in order
        async with asyncio.timeout(30):  # hang guard
            while await ctx.store.events.unpublished(limit=10, older_than=0):
                await asyncio.sleep(0.05)
        published = await drain_until_sentinel(bus, sub)
        assert {m.id for m in published} == set(stored.values())  # at-least-once
        await sub.close()


async def test_client_chosen_id_is_idempotent(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish")
        body = _event(id="evt_client_chosen_1")
        a = await client.post("/v1/events", json=body, headers=key)
        b = await client.post("/v1/events", json=body, headers=key)
        assert a.json()["ids"] == b.json()["ids"] == ["evt_client_chosen_1"]
        assert b.json()["events"][0]["duplicate"] is True


async def test_a_chosen_id_reused_for_another_event_is_409_not_dropped(
    tmp_path: Path, store_url: str
) -> None:
    """The same id with another name, user, source or payload is another event: 409
    ``duplicate_event``, the first one kept (a retry of the same event stays a 200
    duplicate), and nothing of the request stored (a batch is refused whole)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        first = _event(id="evt_reused_1")
        assert (await client.post("/v1/events", json=first, headers=key)).status_code == 200
        for other in (
            {**first, "payload": {**first["payload"], "name": "CHANGED"}},
            {**first, "user_id": "someone_else"},
            {**first, "event_name": "other.thing"},  # (an unregistered name: any payload)
        ):
            r = await client.post("/v1/events", json=other, headers=key)
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "duplicate_event"
            assert "id 'evt_reused_1' is already stored with another name" in r.json()["message"]
        kept = await client.get("/v1/events/evt_reused_1", headers=key)
        assert kept.json()["payload"] == first["payload"]

        batch = [
            _event(id="evt_batch_new_1"),
            {**first, "payload": {**first["payload"], "name": "B"}},
        ]
        r = await client.post("/v1/events", json=batch, headers=key)
        assert r.status_code == 409, r.text
        assert r.json()["message"].startswith("event 1: ")
        assert "nothing of the batch was stored" in r.json()["message"]
        assert (await client.get("/v1/events/evt_batch_new_1", headers=key)).status_code == 404

        # under an Idempotency-Key alike, and the 409 is its recorded answer
        idem = {**key, "Idempotency-Key": "k-reused"}
        changed = {**first, "payload": {**first["payload"], "name": "I"}}
        answers = [await client.post("/v1/events", json=changed, headers=idem) for _ in range(2)]
        assert [a.status_code for a in answers] == [409, 409]
        assert answers[1].headers["idempotent-replayed"] == "true"


async def test_a_batch_with_two_events_under_one_chosen_id_is_409_and_stores_nothing(
    tmp_path: Path, store_url: str
) -> None:
    """The batch's third event reuses the first's id for another event: refused before
    anything is stored (the first two were stored, and the 409 said so). The same event
    twice in a batch is stored once, the second answered as its duplicate."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        batch = [
            {"id": "my_7", "event_name": "a.b"},
            {"id": "my_8", "event_name": "a.b"},
            {"id": "my_7", "event_name": "a.c"},
        ]
        for headers in (key, {**key, "Idempotency-Key": "k-batch-reuse"}):
            r = await client.post("/v1/events", json=batch, headers=headers)
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "duplicate_event"
            message = r.json()["message"]
            assert message.startswith("event 2: event 0 of the batch has the id 'my_7'")
            assert "nothing of the batch was stored" in message
            for stored_id in ("my_7", "my_8"):
                got = await client.get(f"/v1/events/{stored_id}", headers=key)
                assert got.status_code == 404, got.text

        same = [{"id": "my_9", "event_name": "a.b", "payload": {"n": 1}}] * 2
        r = await client.post("/v1/events", json=same, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["events"] == [
            {"id": "my_9", "duplicate": False},
            {"id": "my_9", "duplicate": True},
        ]
        page = await client.get("/v1/events", headers=key)
        assert [e["id"] for e in page.json()["events"]] == ["my_9"]


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, identity", "x-unknown"])
async def test_a_content_encoded_body_is_415_and_not_read(
    tmp_path: Path, store_url: str, coding: str
) -> None:
    """A gzip body was parsed as it came: 400 "str is not valid UTF-8"."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        body = gzip.compress(orjson.dumps(_event(id="evt_gzipped")))
        headers = {**key, "Content-Type": "application/json", "Content-Encoding": coding}
        r = await client.post("/v1/events", content=body, headers=headers)
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported_content_encoding"
        assert "Content-Encoding" in r.json()["message"]
        assert "not supported" in r.json()["message"]
        assert r.headers["accept-encoding"] == "identity"
        assert (await client.get("/v1/events/evt_gzipped", headers=key)).status_code == 404

        plain = {**headers, "Content-Encoding": "identity"}
        r = await client.post("/v1/events", content=orjson.dumps(_event()), headers=plain)
        assert r.status_code == 200, r.text


async def test_bad_input(tmp_path: Path, store_url: str) -> None:
    settings = settings_for(tmp_path, store_url, max_body_bytes=4096)
    async with running_app(settings) as (app, client):
        key = await _key(app, "publish")
        r = await client.post("/v1/events", content=b"[{", headers=key)
        assert r.status_code == 400
        assert r.json()["error"] == "malformed_json"

        r = await client.post("/v1/events", json={"payload": {}}, headers=key)
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "event_name"

        # registry: user.created requires an email; in a batch the index is named
        bad = _event(user="u9")
        del bad["payload"]["email"]
        r = await client.post("/v1/events", json=[_event(), bad], headers=key)
        assert r.status_code == 422
        assert "1.payload.email" in [d["field"] for d in r.json()["details"]]

        r = await client.post("/v1/events", json=[], headers=key)
        assert r.status_code == 422
        r = await client.post("/v1/events", json=_event(source="razorpay"), headers=key)
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "source"
        # the service's own events (endpoint.disabled, ...) cannot be forged with a key
        r = await client.post("/v1/events", json=_event(source="system"), headers=key)
        assert r.status_code == 422
        assert r.json()["message"] == "source 'system' is reserved for the service's own events"
        # the SSE stream's own message names cannot be published (a browser's listener for
        # "resume_failed" would fire for such an event)
        r = await client.post("/v1/events", json=_event(name="resume_failed"), headers=key)
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "event_name"
        # nor EventSource's own event types (an "error" event fires the page's onerror)
        for name in ("error", "open", "message"):
            r = await client.post("/v1/events", json=_event(name=name), headers=key)
            assert r.status_code == 422, name
            assert "EventSource" in r.json()["message"]
        # an array item that is not an object: named once, by its index
        r = await client.post("/v1/events", json=[_event(), None], headers=key)
        assert r.status_code == 422
        assert r.json()["message"] == "event 1: an event must be a JSON object"
        assert r.json()["details"][0]["field"] == "1"

        big = _event(pad="x" * 5000)
        r = await client.post("/v1/events", json=big, headers=key)
        assert r.status_code == 413

        store = resources_of(app).store
        assert store is not None
        assert (await store.events.query(limit=10)).events == []


async def test_auth(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        publish_only = await _key(app, "publish")
        read_only = await _key(app, "read")
        admin = await _key(app, "admin")

        r = await client.post("/v1/events", json=_event())
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        r = await client.post("/v1/events", json=_event(), headers={"Authorization": "Bearer em_x"})
        assert r.status_code == 401
        r = await client.post("/v1/events", json=_event(), headers=read_only)
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"
        assert (await client.get("/v1/events", headers=publish_only)).status_code == 403
        assert (await client.get("/v1/events", headers=read_only)).status_code == 200
        # X-API-Key works too; admin implies every scope
        x_key = {"X-API-Key": admin["Authorization"].removeprefix("Bearer ")}
        assert (await client.post("/v1/events", json=_event(), headers=x_key)).status_code == 200
        # the key never appears in an error body
        r = await client.get("/v1/events", headers=publish_only)
        assert publish_only["Authorization"].split()[1] not in r.text


async def test_query_filters_and_cursor_pagination(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        events = [
            _event(name="user.created", user="alice"),
            _event(name="user.created", user="bob"),
            {"event_name": "payment.processed", "user_id": "alice", "payload": _pp("p1")},
            {"event_name": "payment.processed", "user_id": "bob", "payload": _pp("p2")},
            {
                "event_name": "payment.processed",
                "user_id": "alice",
                "source": "billing",
                "payload": _pp("p3"),
                "created_at": "2020-01-01T00:00:00Z",
            },
        ]
        r = await client.post("/v1/events", json=events, headers=key)
        assert r.status_code == 200, r.text
        ids = r.json()["ids"]

        async def query(**params: Any) -> dict[str, Any]:
            resp = await client.get("/v1/events", params=params, headers=key)
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        alice = await query(user_id="alice")
        assert [e["id"] for e in alice["events"]] == [ids[0], ids[2], ids[4]]
        pay = await query(event_name="payment.*")
        assert [e["id"] for e in pay["events"]] == ids[2:]
        billing = await query(source="billing")
        assert [e["id"] for e in billing["events"]] == [ids[4]]
        recent = await query(since="2021-01-01T00:00:00Z")
        assert [e["id"] for e in recent["events"]] == ids[:4]
        old = await query(until="2021-01-01T00:00:00Z")
        assert [e["id"] for e in old["events"]] == [ids[4]]
        # Unix seconds, as documented, however far ahead (no reading as milliseconds)
        seconds = await query(since=str(int(datetime(2021, 1, 1, tzinfo=UTC).timestamp())))
        assert [e["id"] for e in seconds["events"]] == ids[:4]
        assert (await query(since="99999999999"))["events"] == []  # the year 5138
        assert [e["id"] for e in (await query(until="99999999999"))["events"]] == ids

        # cursor pagination, 2 per page, ascending then descending
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = await query(**params)
            seen += [e["id"] for e in page["events"]]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        assert seen == ids
        desc = await query(order="desc", limit=3)
        assert [e["id"] for e in desc["events"]] == ids[::-1][:3]
        positions = [e["position"] for e in desc["events"]]
        assert positions == sorted(positions, reverse=True)

        bad = await client.get("/v1/events", params={"cursor": "garbage!"}, headers=key)
        assert bad.status_code == 400
        assert bad.json()["error"] == "invalid_cursor"
        bad = await client.get("/v1/events", params={"limit": 0}, headers=key)
        assert bad.status_code == 422
        assert bad.json()["details"][0]["field"] == "query.limit"
        missing = await client.get("/v1/events/evt_nope", headers=key)
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


def _pp(payment_id: str) -> dict[str, Any]:
    return {
        "payment_id": payment_id,
        "user_id": "x",
        "amount": 12.5,
        "currency": "INR",
        "status": "ok",
        "gateway": "razorpay",
        "processed_at": "2024-01-20T10:30:00Z",
    }


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/evt_1"])
async def test_store_unreachable_is_503_for_the_api(tmp_path: Path, path: str) -> None:
    from tests.conftest import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    async with running_app(settings_for(tmp_path, dead)) as (_, client):
        r = await client.get(path, headers={"Authorization": "Bearer em_abc_def"})
        assert r.status_code == 503
        assert r.json()["error"] == "store_unavailable"


async def test_a_chosen_event_id_is_its_dedup_key_with_or_without_an_idempotency_key(
    tmp_path: Path, store_url: str
) -> None:
    """An event whose id the caller chose is deduplicated by that id, Idempotency-Key or
    not: a batch resending the same events is never answered 409 after storing part of
    itself (another event under a taken id is: the test above)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        body = _event(id="evt_taken_1")
        assert (await client.post("/v1/events", json=body, headers=key)).status_code == 200
        idem = {**key, "Idempotency-Key": "k-taken"}
        batch = [_event(user="new"), body, _event(id="evt_twice_1"), _event(id="evt_twice_1")]
        for headers in (idem, key):
            r = await client.post("/v1/events", json=batch, headers=headers)
            assert r.status_code == 200, r.text
            ids = r.json()["ids"]
            assert ids[1:] == ["evt_taken_1", "evt_twice_1", "evt_twice_1"]
            duplicates = [e["duplicate"] for e in r.json()["events"]]
            if headers is idem:
                assert duplicates == [False, True, False, True]
            else:  # the same batch again, without the key: the first event is new again
                assert duplicates == [False, True, True, True]
        page = await client.get("/v1/events", headers=key)
        assert len(page.json()["events"]) == 4  # evt_taken_1, two "new", evt_twice_1


@pytest.mark.parametrize("depth", [65, 253, 254, 255, 300, 5000])
async def test_a_payload_nested_too_deep_is_422_naming_the_limit(
    tmp_path: Path, store_url: str, depth: int
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        n = depth - 1  # the event object is one level
        body = b'{"event_name": "deep.thing", "payload": ' + b"[" * n + b"]" * n + b"}"
        r = await client.post("/v1/events", content=body, headers=key)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "json_too_deep"
        assert "64 levels" in r.json()["message"]
        store = resources_of(app).store
        assert store is not None
        assert (await store.events.query(limit=10)).events == []
        # the limit itself is fine
        ok = b'{"event_name": "deep.thing", "payload": ' + b"[" * 63 + b"]" * 63 + b"}"
        assert (await client.post("/v1/events", content=ok, headers=key)).status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "e" * 129), ("event_name", "e" * 201), ("source", "e" * 65), ("user_id", "u" * 257)],
)
async def test_an_over_long_field_is_422_naming_it(
    tmp_path: Path, store_url: str, field: str, value: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish")
        r = await client.post("/v1/events", json=_event(**{field: value}), headers=key)
        assert r.status_code == 422, r.text
        assert r.json()["details"][0]["field"] == field
        r = await client.post("/v1/events", json=[_event(), _event(**{field: value})], headers=key)
        assert r.status_code == 422, r.text
        assert r.json()["details"][0]["field"] == f"1.{field}"
        store = resources_of(app).store
        assert store is not None
        assert (await store.events.query(limit=10)).events == []


async def test_a_nul_in_a_lookup_matches_nothing(tmp_path: Path, store_url: str) -> None:
    """PostgreSQL's text refuses NUL; no stored user id, source or id holds one."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        assert (await client.post("/v1/events", json=_event(), headers=key)).status_code == 200
        for params in (
            {"user_id": "\x00"},
            {"user_id": "u1\x00"},
            {"source": "a\x00b"},
            {"source": "internal\x00", "user_id": "u1"},
            {"user_id": "u\x1f1"},
            {"user_id": "u" * 300},
        ):
            r = await client.get("/v1/events", params=params, headers=key)
            assert r.status_code == 200, (params, r.text)
            assert r.json() == {"events": [], "next_cursor": None, "has_more": False}
        # the other checks still hold
        r = await client.get("/v1/events", params={"user_id": "\x00", "cursor": "x"}, headers=key)
        assert r.status_code == 400
        for event_id in ("%00", "evt%00x", "a%1fb", "%E2%82%AC"):
            r = await client.get(f"/v1/events/{event_id}", headers=key)
            assert r.status_code == 404, (event_id, r.text)
            assert r.json()["error"] == "not_found"


async def test_a_nul_in_payload_or_metadata_strings_is_stored_exactly_or_refused(
    tmp_path: Path, store_url: str
) -> None:
    """No 500 on either store: the event comes back exactly as sent, or is refused with
    422 naming the field (and then nothing is stored)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        event = {
            "event_name": "nul.inside",
            "payload": {"a\x00": "x\x00y", "list": ["\x00"]},
            "metadata": {"correlation_id": "c\x00", "headers": {"h\x00": "v\x00"}},
        }
        r = await client.post("/v1/events", json=event, headers=key)
        assert r.status_code in (200, 422), r.text
        store = resources_of(app).store
        assert store is not None
        if r.status_code == 422:
            assert r.json()["details"][0]["field"].startswith(("payload", "metadata"))
            assert (await store.events.query(limit=10)).events == []
            return
        got = await client.get(f"/v1/events/{r.json()['ids'][0]}", headers=key)
        assert got.json()["payload"] == event["payload"]
        assert got.json()["metadata"]["correlation_id"] == "c\x00"
        assert got.json()["metadata"]["headers"] == {"h\x00": "v\x00"}


async def test_a_null_payload_is_stored_as_json_null(tmp_path: Path, store_url: str) -> None:
    """JSON ``null`` is a payload like any other (a webhook body may be ``null`` too)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        r = await client.post(
            "/v1/events", json={"event_name": "nothing.here", "payload": None}, headers=key
        )
        assert r.status_code == 200, r.text
        got = await client.get(f"/v1/events/{r.json()['ids'][0]}", headers=key)
        assert got.json()["payload"] is None


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_a_time_outside_the_utc_years_is_422(
    tmp_path: Path, store_url: str, when: str
) -> None:
    """Found by the fuzz test: converting it to UTC overflowed (a 500)."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "publish", "read")
        for field in ("created_at", "processed_at"):
            body = {"event_name": "x.y", field: when}
            r = await client.post("/v1/events", json=body, headers=key)
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["field"] == field
        for param in ("since", "until"):
            r = await client.get("/v1/events", params={param: when}, headers=key)
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["field"] == f"query.{param}"


@pytest.mark.parametrize("value", ["1e10", "1e400", "NaN", "inf", "1.5e9", "3e10", "yesterday"])
async def test_a_time_filter_that_is_no_time_is_422_saying_what_is_expected(
    tmp_path: Path, store_url: str, value: str
) -> None:
    """Pydantic said "input is too short" of these (and read 1.5e9 as seconds, 3e10 as
    milliseconds): the answer names the forms a time filter takes."""
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        key = await _key(app, "read")
        for param in ("since", "until"):
            r = await client.get("/v1/events", params={param: value}, headers=key)
            assert r.status_code == 422, r.text
            [detail] = r.json()["details"]
            assert detail["field"] == f"query.{param}"
            assert detail["message"].startswith("not a time: expected an RFC 3339 date-time")
            assert "Unix seconds in digits" in detail["message"]
            assert "too short" not in r.json()["message"]
        bad_month = await client.get(
            "/v1/events", params={"since": "2024-13-01T00:00:00Z"}, headers=key
        )
        assert bad_month.status_code == 422
        message = bad_month.json()["details"][0]["message"]
        assert message.startswith("not a valid date-time (month value is outside")
        assert "expected an RFC 3339 date-time" in message
        for good in ("1705746600", "1705746600.5", "2024-01-20T10:30:00Z", "2024-01-20"):
            r = await client.get("/v1/events", params={"since": good}, headers=key)
            assert r.status_code == 200, (good, r.text)


async def test_a_store_timeout_says_whether_a_retry_is_safe(tmp_path: Path, store_url: str) -> None:
    """The store cannot commit in time (another client holds the events table): 503.
    What the request gave up on may still commit, so without an Idempotency-Key or
    chosen ids the message says a retry could store the events twice and what to do;
    with one it does not (its retry is answered as a duplicate)."""
    settings = settings_for(tmp_path, store_url, request_timeout_seconds=0.3)
    async with running_app(settings) as (app, client):
        key = await _key(app, "publish")
        warm = await client.post("/v1/events", json=_event(), headers=key)  # connections open
        assert warm.status_code == 200, warm.text
        async with events_table_locked(store_url):
            bare = await client.post("/v1/events", json=_event(), headers=key)
            keyed = await client.post(
                "/v1/events", json=_event(), headers={**key, "Idempotency-Key": "k-timeout"}
            )
        assert bare.status_code == 503, bare.text
        assert bare.json()["error"] == "store_unavailable"
        assert "could store them twice" in bare.json()["message"]
        assert "Idempotency-Key" in bare.json()["message"]
        assert keyed.status_code == 503, keyed.text
        assert "twice" not in keyed.json()["message"]
