"""Webhook receivers through real HTTP requests (httpx → ASGI app with its lifespan)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from fastapi import FastAPI

from eventmill.app import resources_of
from eventmill.events import Event
from eventmill.settings import Settings
from tests import payloads
from tests.conftest import free_port
from tests.ingest.support import (
    DELIVERY_ID_HEADERS,
    GITHUB_SECRET,
    HMAC_SECRET,
    RAZORPAY_SECRET,
    STANDARD_SECRET,
    STRIPE_SECRET,
    drain_until_sentinel,
    events_table_locked,
    gate_bus,
    running_app,
    settings_for,
    signed,
)


def _razorpay(event: str = "payment.captured", **kw: Any) -> tuple[bytes, dict[str, str]]:
    body = payloads.dumps(payloads.RAZORPAY_SAMPLES[event](**kw))
    event_id = f"evt_{uuid.uuid4().hex[:14]}"
    return body, payloads.razorpay_headers(body, RAZORPAY_SECRET, event_id)


@pytest.mark.parametrize(
    ("event", "user_id"),
    [
        ("payment.captured", "user_123"),
        ("order.paid", "user_456"),
        ("refund.processed", "acc_BFQ7uQEaa7j2z7"),
    ],
)
async def test_razorpay_event_is_stored_and_published_once(
    tmp_path: Path, store_url: str, event: str, user_id: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        sub = await ctx.bus.subscribe("events")
        body, headers = _razorpay(event)
        first = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert first.status_code == 200, first.text
        assert first.json()["duplicate"] is False
        event_id = first.json()["id"]

        again = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert again.status_code == 200
        assert again.json() == {"id": event_id, "duplicate": True}

        published = await drain_until_sentinel(ctx.bus, sub)
        assert [m.id for m in published] == [event_id]
        assert published[0].metadata["partition_key"] == user_id
        got = Event.from_message(published[0])
        assert got.event_name == f"razorpay.{event}"
        assert got.source == "razorpay"
        assert got.user_id == user_id
        sent = payloads.RAZORPAY_SAMPLES[event]()
        assert {k: got.payload[k] for k in sent} == sent  # the body, plus its entities flattened

        assert ctx.store is not None
        stored = await ctx.store.events.get(event_id)
        assert stored is not None
        assert stored.external_id == headers["X-Razorpay-Event-Id"]
        # marked published after the publish, by the marker's next round (batched
        # across requests): the message on the bus can come first
        await _wait_published(app, event_id)
        await sub.close()


async def test_ten_concurrent_deliveries_store_one_and_publish_one(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        sub = await ctx.bus.subscribe("events")
        body, headers = _razorpay("payment.captured", payment_id="pay_concurrent")
        responses = await asyncio.gather(
            *(client.post("/webhooks/razorpay", content=body, headers=headers) for _ in range(10))
        )
        assert [r.status_code for r in responses] == [200] * 10
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1
        assert sum(not r.json()["duplicate"] for r in responses) == 1

        published = await drain_until_sentinel(ctx.bus, sub)
        assert [m.id for m in published] == list(ids)
        page = await ctx.store.events.query(source="razorpay", limit=100)
        assert [s.id for s in page.events] == list(ids)
        await sub.close()


async def test_razorpay_signature_failures_are_401(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        body, headers = _razorpay()
        wrong = payloads.razorpay_headers(body, "not-the-secret", "evt_w")
        cases = {
            "wrong": wrong,
            "missing": {k: v for k, v in headers.items() if k != "X-Razorpay-Signature"},
            "tampered-body": headers,
        }
        for name, h in cases.items():
            content = body + b" " if name == "tampered-body" else body
            r = await client.post("/webhooks/razorpay", content=content, headers=h)
            assert r.status_code == 401, name
            assert r.json()["error"] == "unauthorized"
            assert RAZORPAY_SECRET not in r.text
            assert headers["X-Razorpay-Signature"] not in r.text
        # the rotated (second) secret is accepted
        rotated = payloads.razorpay_headers(body, "rzp_rotated_secret", "evt_rot")
        r = await client.post("/webhooks/razorpay", content=body, headers=rotated)
        assert r.status_code == 200
        assert (await resources_of(app).store.events.query(limit=10)).events[0].id == r.json()["id"]


async def test_unknown_source_is_404_and_unconfigured_razorpay_too(
    tmp_path: Path, store_url: str
) -> None:
    settings = settings_for(tmp_path, store_url, razorpay_webhook_secret="", sources={})
    async with running_app(settings) as (_, client):
        body, headers = _razorpay()
        for path in ("/webhooks/razorpay", "/webhooks/shopify"):
            r = await client.post(path, content=body, headers=headers)
            assert r.status_code == 404
            assert r.json()["error"] == "unknown_source"
        # the message names the setting that turns the source on
        r = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert "set RAZORPAY_WEBHOOK_SECRET" in r.json()["message"]
        r = await client.post("/webhooks/shop-ify", content=body, headers=headers)
        assert "EVENTMILL_SOURCES__SHOP_IFY__SCHEME" in r.json()["message"]
        assert "[sources.shop-ify]" in r.json()["message"]


async def test_malformed_json_is_400_and_schema_violation_is_422(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        bad = b'{"event": "payment.captured", '
        r = await client.post(
            "/webhooks/razorpay",
            content=bad,
            headers=payloads.razorpay_headers(bad, RAZORPAY_SECRET, "evt_bad"),
        )
        assert r.status_code == 400
        assert r.json()["error"] == "malformed_json"

        doc = payloads.payment_captured()
        doc["payload"]["payment"]["entity"]["amount"] = "fifty"
        body = payloads.dumps(doc)
        r = await client.post(
            "/webhooks/razorpay",
            content=body,
            headers=payloads.razorpay_headers(body, RAZORPAY_SECRET, "evt_422"),
        )
        assert r.status_code == 422
        fields = [d["field"] for d in r.json()["details"]]
        assert "payload.payload.payment.entity.amount" in fields
        assert "amount" in r.json()["message"]

        nameless = payloads.dumps({"entity": "event", "payload": {}})
        r = await client.post(
            "/webhooks/razorpay",
            content=nameless,
            headers=payloads.razorpay_headers(nameless, RAZORPAY_SECRET, "evt_nameless"),
        )
        assert r.status_code == 422
        assert r.json()["details"][0]["field"] == "event"
        assert resources_of(app).store is not None
        assert (await resources_of(app).store.events.query(limit=10)).events == []


async def _stream(chunks: int, size: int, counter: list[int]) -> Any:
    for _ in range(chunks):
        counter[0] += 1
        yield b"x" * size


async def test_oversized_body_is_413_without_reading_it(tmp_path: Path, store_url: str) -> None:
    settings = settings_for(tmp_path, store_url, max_body_bytes=64 * 1024)
    async with running_app(settings) as (_, client):
        # declared too large: refused before the first chunk is read
        sent = [0]
        r = await client.post(
            "/webhooks/razorpay",
            content=_stream(1000, 64 * 1024, sent),
            headers={"Content-Length": str(1000 * 64 * 1024), "X-Razorpay-Signature": "00"},
        )
        assert r.status_code == 413
        assert r.json()["error"] == "payload_too_large"
        assert sent[0] == 0

        # chunked, no length: cut off at the chunk that crosses the limit (64 MiB offered)
        sent = [0]
        r = await client.post(
            "/webhooks/razorpay",
            content=_stream(1000, 64 * 1024, sent),
            headers={"X-Razorpay-Signature": "00"},
        )
        assert r.status_code == 413
        assert sent[0] <= 2, f"read {sent[0]} of 1000 chunks"


async def test_a_content_encoded_body_is_415(tmp_path: Path, store_url: str) -> None:
    """Read as it came, a gzip body failed as JSON that is not UTF-8 (a 400)."""
    async with running_app(settings_for(tmp_path, store_url)) as (_, client):
        body, headers = _razorpay()
        r = await client.post(
            "/webhooks/razorpay",
            content=gzip.compress(body),
            headers={**headers, "Content-Encoding": "gzip"},
        )
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported_content_encoding"
        assert r.headers["accept-encoding"] == "identity"


async def test_github_receiver(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        body = payloads.dumps({**payloads.github_push(), "action": "created"})
        delivery = str(uuid.uuid4())
        headers = payloads.github_headers(body, GITHUB_SECRET, delivery, event="release")
        r = await client.post("/webhooks/github", content=body, headers=headers)
        assert r.status_code == 200, r.text
        stored = await resources_of(app).store.events.get(r.json()["id"])
        assert stored.event.event_name == "github.release.created"
        assert stored.external_id == delivery
        again = await client.post("/webhooks/github", content=body, headers=headers)
        assert again.json() == {"id": r.json()["id"], "duplicate": True}

        wrong = payloads.github_headers(body, "nope", delivery)
        assert (
            await client.post("/webhooks/github", content=body, headers=wrong)
        ).status_code == 401
        missing = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
        r = await client.post("/webhooks/github", content=body, headers=missing)
        assert r.status_code == 401
        assert "X-Hub-Signature-256" in r.json()["message"]


async def test_stripe_receiver(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        evt_id = f"evt_{uuid.uuid4().hex[:20]}"
        body = payloads.dumps(payloads.stripe_event(evt_id))
        r = await client.post(
            "/webhooks/stripe", content=body, headers=payloads.stripe_headers(body, STRIPE_SECRET)
        )
        assert r.status_code == 200, r.text
        stored = await resources_of(app).store.events.get(r.json()["id"])
        assert stored.event.event_name == "stripe.payment_intent.succeeded"
        assert stored.event.user_id == "user_789"
        assert stored.external_id == evt_id
        # a retry signed at another time is the same event
        later = payloads.stripe_headers(body, STRIPE_SECRET, timestamp=int(time.time()) - 60)
        r2 = await client.post("/webhooks/stripe", content=body, headers=later)
        assert r2.json() == {"id": r.json()["id"], "duplicate": True}

        stale = payloads.stripe_headers(body, STRIPE_SECRET, timestamp=int(time.time()) - 400)
        r = await client.post("/webhooks/stripe", content=body, headers=stale)
        assert r.status_code == 401
        assert "tolerance" in r.json()["message"]
        wrong = payloads.stripe_headers(body, "whsec_wrong")
        assert (
            await client.post("/webhooks/stripe", content=body, headers=wrong)
        ).status_code == 401
        assert (await client.post("/webhooks/stripe", content=body)).status_code == 401


async def test_standard_webhooks_receiver(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        body = payloads.dumps({"type": "invoice.paid", "data": {"id": "inv_1"}})
        msg_id = f"msg_{uuid.uuid4().hex}"

        def headers(when: datetime, secret: str = STANDARD_SECRET) -> dict[str, str]:
            sig = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
            return {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(when.timestamp())),
                "webhook-signature": sig,
                "content-type": "application/json",
            }

        now = datetime.now(UTC)
        r = await client.post("/webhooks/std", content=body, headers=headers(now))
        assert r.status_code == 200, r.text
        stored = await resources_of(app).store.events.get(r.json()["id"])
        assert stored.event.event_name == "std.invoice.paid"
        assert stored.external_id == msg_id

        stale = datetime.fromtimestamp(time.time() - 3600, UTC)
        r = await client.post("/webhooks/std", content=body, headers=headers(stale))
        assert r.status_code == 401
        other = "whsec_" + base64.b64encode(b"other").decode()
        r = await client.post("/webhooks/std", content=body, headers=headers(now, other))
        assert r.status_code == 401
        r = await client.post("/webhooks/std", content=body, headers={"webhook-id": msg_id})
        assert r.status_code == 401
        assert "missing" in r.json()["message"]


async def test_plain_hmac_receiver(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        body = payloads.dumps({"type": "order.shipped", "customer": {"id": "cus_42"}})
        sig = payloads.hmac_headers(
            body,
            HMAC_SECRET,
            header="X-Acme-Signature",
            algorithm="sha512",
            encoding="base64",
            prefix="v1=",
        )
        r = await client.post(
            "/webhooks/acme", content=body, headers={**sig, "X-Acme-Delivery": "dlv_1"}
        )
        assert r.status_code == 200, r.text
        stored = await resources_of(app).store.events.get(r.json()["id"])
        assert stored.event.event_name == "acme.order.shipped"
        assert stored.event.user_id == "cus_42"
        assert stored.external_id == "dlv_1"
        # without a delivery id the dedup key is the body digest: same body, same event
        a = await client.post("/webhooks/acme", content=body, headers=sig)
        b = await client.post("/webhooks/acme", content=body, headers=sig)
        assert a.json()["duplicate"] is False
        assert b.json() == {"id": a.json()["id"], "duplicate": True}

        wrong = payloads.hmac_headers(body, "nope", header="X-Acme-Signature", prefix="v1=")
        assert (await client.post("/webhooks/acme", content=body, headers=wrong)).status_code == 401
        assert (await client.post("/webhooks/acme", content=body)).status_code == 401


async def test_a_rejected_webhook_is_logged_without_its_source_s_signature_header(
    tmp_path: Path, store_url: str
) -> None:
    """The header a source signs in is redacted whatever it is called (``X-Acme-Sig``
    holds none of the words the log redacts by name)."""
    sources = {
        "plain": {
            "scheme": "hmac",
            "secrets": [HMAC_SECRET],
            "header": "X-Acme-Sig",
            "encoding": "base64",
            "prefix": "v1=",
        }
    }
    async with running_app(settings_for(tmp_path, store_url, sources=sources)) as (app, client):
        body = payloads.dumps({"type": "a b"})  # signed, but not a valid event name
        sig = payloads.hmac_headers(
            body, HMAC_SECRET, header="X-Acme-Sig", encoding="base64", prefix="v1="
        )
        r = await client.post(
            "/webhooks/plain", content=body, headers={**sig, "X-Request-Id": "req_1"}
        )
        assert r.status_code == 422, r.text
        journal = resources_of(app).require_store().journal
        await journal.flush()
        [row] = await journal.rejections(source="plain")
        assert row.headers["x-acme-sig"] == "<redacted>"
        assert row.headers["x-request-id"] == "req_1"
        assert row.headers["content-type"] == "application/json"


async def test_store_unreachable_is_503_and_nothing_acknowledged(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    async with running_app(settings_for(tmp_path, dead)) as (_, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["store"]["ok"] is False
        assert ready.json()["bus"]["ok"] is True
        body, headers = _razorpay()
        r = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert r.status_code == 503
        assert r.json()["error"] == "store_unavailable"
        assert RAZORPAY_SECRET not in r.text


async def test_bus_unreachable_is_503_and_event_stays_for_the_relay(
    tmp_path: Path, store_url: str
) -> None:
    dead_bus = f"redis://127.0.0.1:{free_port()}/0"
    async with running_app(settings_for(tmp_path, store_url, bus_url=dead_bus)) as (app, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["bus"]["ok"] is False
        body, headers = _razorpay()
        r = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert r.status_code == 503
        assert r.json()["error"] == "bus_unavailable"
        events = resources_of(app).store.events
        pending = await events.unpublished(limit=10, older_than=0)
        assert [p.external_id for p in pending] == [headers["X-Razorpay-Event-Id"]]
        # the provider's retry is a duplicate of the stored event: not stored twice
        again = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert again.json() == {"id": pending[0].id, "duplicate": True}


TIMEOUT = 0.3
"""``request_timeout_seconds`` of the slow-store and slow-bus tests."""


def _timeout_settings(tmp_path: Path, store_url: str) -> Settings:
    return settings_for(
        tmp_path,
        store_url,
        request_timeout_seconds=TIMEOUT,
        relay_interval_seconds=0.1,
        relay_grace_seconds=0.2,
    )


async def _wait_published(app: FastAPI, event_id: str) -> None:
    store = resources_of(app).store
    assert store is not None
    events = store.events
    async with asyncio.timeout(30):  # hang guard
        while (got := await events.get(event_id)) is None or got.published_at is None:
            await asyncio.sleep(0.05)


async def test_slow_store_is_503_within_the_request_timeout(tmp_path: Path, store_url: str) -> None:
    async with running_app(_timeout_settings(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.bus is not None
        assert ctx.store is not None
        sub = await ctx.bus.subscribe("events")
        warm_body, warm_headers = _razorpay(payment_id="pay_before_the_lock")
        warm = await client.post("/webhooks/razorpay", content=warm_body, headers=warm_headers)
        assert warm.status_code == 200, warm.text

        body, headers = _razorpay(payment_id="pay_slow_store")
        async with events_table_locked(store_url):
            started = time.monotonic()
            r = await client.post("/webhooks/razorpay", content=body, headers=headers)
            elapsed = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert r.json() == {
                "error": "store_unavailable",
                "message": f"the event store did not answer within {TIMEOUT:g} s",
            }
            assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2.0, elapsed
            page = await ctx.store.events.query(source="razorpay", limit=10)
            assert [s.id for s in page.events] == [warm.json()["id"]]  # nothing acknowledged

        # The insert the request gave up on may still commit once the lock is gone
        # (group commit); then it must not be stranded: the provider's retry is answered
        # with it, and it reaches the bus (from the retry, or from the relay).
        again = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert again.status_code == 200, again.text
        event_id = again.json()["id"]
        await _wait_published(app, event_id)
        published = await drain_until_sentinel(ctx.bus, sub)
        assert {m.id for m in published} == {warm.json()["id"], event_id}  # at-least-once
        stored = await ctx.store.events.get(event_id)
        assert stored is not None
        assert stored.external_id == headers["X-Razorpay-Event-Id"]
        page = await ctx.store.events.query(source="razorpay", limit=10)
        assert [s.id for s in page.events] == [warm.json()["id"], event_id]  # stored once
        await sub.close()


async def test_slow_bus_is_503_and_the_relay_publishes_the_event_when_it_answers(
    tmp_path: Path, store_url: str
) -> None:
    async with running_app(_timeout_settings(tmp_path, store_url)) as (app, client):
        ctx = resources_of(app)
        assert ctx.store is not None
        bus = gate_bus(app)
        sub = await bus.subscribe("events")
        warm_body, warm_headers = _razorpay(payment_id="pay_before_the_gate")
        warm = await client.post("/webhooks/razorpay", content=warm_body, headers=warm_headers)
        assert warm.status_code == 200, warm.text
        warm_id = warm.json()["id"]
        await _wait_published(app, warm_id)

        bus.close_gate()  # publish no longer returns
        attempts = bus.attempts
        body, headers = _razorpay(payment_id="pay_slow_bus")
        started = time.monotonic()
        r = await client.post("/webhooks/razorpay", content=body, headers=headers)
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "bus_unavailable"
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2.0, elapsed
        assert bus.attempts > attempts  # it was stored, then the bus was tried

        # stored, not yet published, and the 503 says so
        [pending] = await ctx.store.events.unpublished(limit=10, older_than=0)
        assert pending.external_id == headers["X-Razorpay-Event-Id"]
        assert pending.id in r.json()["message"]
        assert "will be published when the bus is back" in r.json()["message"]
        # the provider's retry is answered as a duplicate, without waiting for the bus
        again = await client.post("/webhooks/razorpay", content=body, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json() == {"id": pending.id, "duplicate": True}
        got = await ctx.store.events.get(pending.id)
        assert got is not None
        assert got.published_at is None

        bus.open_gate()  # the bus answers again: the relay publishes the stored event
        await _wait_published(app, pending.id)
        published = await drain_until_sentinel(bus, sub)
        assert {m.id for m in published} == {warm_id, pending.id}  # at-least-once
        relayed = Event.from_message(next(m for m in published if m.id == pending.id))
        assert relayed.event_name == "razorpay.payment.captured"
        assert (
            relayed.payload["payload"]
            == payloads.payment_captured(payment_id="pay_slow_bus")["payload"]
        )
        assert relayed.user_id == "user_123"
        await sub.close()


async def test_wrong_method_is_a_json_405(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (_, client):
        r = await client.get("/webhooks/razorpay")
        assert r.status_code == 405
        assert r.json()["error"] == "method_not_allowed"


@pytest.mark.slow
async def test_store_stopped_while_running_is_503_then_recovers(tmp_path: Path) -> None:
    from tests.pubsub import _postgres_server

    if not _postgres_server.available():
        pytest.skip("PostgreSQL binaries are not installed")
    server = _postgres_server.PostgresServer()
    await asyncio.to_thread(server.start)
    try:
        async with running_app(settings_for(tmp_path, server.url)) as (_, client):
            body, headers = _razorpay()
            assert (
                await client.post("/webhooks/razorpay", content=body, headers=headers)
            ).is_success
            await asyncio.to_thread(server.stop)
            body2, headers2 = _razorpay(payment_id="pay_while_down")
            down = await client.post("/webhooks/razorpay", content=body2, headers=headers2)
            assert down.status_code == 503
            assert down.json()["error"] == "store_unavailable"
            await asyncio.to_thread(server.start)
            back = await client.post("/webhooks/razorpay", content=body2, headers=headers2)
            assert back.status_code == 200, back.text
            assert back.json()["duplicate"] is False  # the 503 stored nothing
    finally:
        await asyncio.to_thread(server.cleanup)


def _stripe_body(event_id: str) -> bytes:
    return payloads.dumps(payloads.stripe_event(event_id))


@pytest.mark.parametrize("source", list(DELIVERY_ID_HEADERS))
async def test_a_delivery_id_over_256_characters_is_422_naming_its_header(
    tmp_path: Path, store_url: str, source: str
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        store = resources_of(app).store
        assert store is not None
        header = DELIVERY_ID_HEADERS[source]
        field = f"header.{header}" if header else "id"
        for length, expected in ((256, 200), (257, 422), (5000, 422)):
            delivery = ("e" * length)[:length]
            if source == "stripe":
                body = _stripe_body(delivery)
            elif source == "razorpay":
                body = payloads.dumps(payloads.payment_captured())
            else:
                body = payloads.dumps({"type": "thing.done", "n": length})
            r = await client.post(
                f"/webhooks/{source}", content=body, headers=signed(source, body, delivery)
            )
            assert r.status_code == expected, r.text
            if expected == 422:
                assert r.json()["error"] == "validation_failed"
                assert r.json()["details"] == [
                    {"field": field, "message": "must be at most 256 characters (the limit)"}
                ]
                assert (header or "id") in r.json()["message"]
        page = await store.events.query(source=source, limit=10)
        assert [e.external_id for e in page.events] == ["e" * 256]


async def test_a_control_character_in_stripe_s_id_is_422(tmp_path: Path, store_url: str) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        for bad in ("evt_\x00nul", "evt_\ttab"):
            body = _stripe_body(bad)
            r = await client.post("/webhooks/stripe", content=body, headers=signed("stripe", body))
            assert r.status_code == 422, r.text
            assert r.json()["details"][0]["field"] == "id"
        store = resources_of(app).store
        assert store is not None
        assert (await store.events.query(limit=10)).events == []


@pytest.mark.parametrize("depth", [65, 255, 300, 5000])
async def test_a_signed_body_nested_too_deep_is_422_and_nothing_is_stored(
    tmp_path: Path, store_url: str, depth: int
) -> None:
    async with running_app(settings_for(tmp_path, store_url)) as (app, client):
        n = depth - 3  # {"data": {"deep": [[…{…}…]]}} nests n + 3 levels
        inner = b"[" * n + b'{"user_id": "u1"}' + b"]" * n
        body = b'{"type": "thing.done", "data": {"deep": ' + inner + b"}}"
        for source in ("acme", "razorpay"):
            r = await client.post(
                f"/webhooks/{source}", content=body, headers=signed(source, body, "dlv_deep")
            )
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "json_too_deep"
            assert "64 levels" in r.json()["message"]
        store = resources_of(app).store
        assert store is not None
        assert (await store.events.query(limit=10)).events == []
