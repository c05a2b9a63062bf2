"""Deliveries to real receivers on 127.0.0.1, on the SQLite and the PostgreSQL store:
signatures, the retry schedule, Retry-After, 410, dead letters, recovery, rotation."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.requests import Request
from starlette.responses import Response

from eventmill.app import resources_of
from eventmill.delivery import DEAD_LETTER_TOPIC
from tests.delivery.support import delivery_settings, receiver, service


def _event(
    user: str = "user_1", name: str = "order.created", **payload: object
) -> dict[str, object]:
    return {"event_name": name, "user_id": user, "payload": payload or {"n": 1}}


async def test_delivery_is_signed_and_verifies_with_standardwebhooks(
    tmp_path: Path, store_url: str
) -> None:
    async with receiver() as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        ep = await svc.create_endpoint(url=rec.url(), user_id="user_1", event_types=["order.*"])
        assert ep["secret"].startswith("whsec_")
        [event_id] = await svc.publish(_event())
        await rec.wait_for(lambda: len(rec.received) == 1)
        got = rec.received[0]
        payload = Webhook(ep["secret"]).verify(got.body, got.headers)
        assert payload["id"] == event_id
        assert payload["event_name"] == "order.created"
        assert got.headers["webhook-id"].startswith("dlv_")
        assert got.headers["content-type"] == "application/json"
        assert got.headers["user-agent"].startswith("eventmill-webhooks/")
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "succeeded"
        )
        assert d["id"] == got.headers["webhook-id"]
        assert d["attempts"] == 1
        detail = await svc.get(f"/v1/deliveries/{d['id']}")
        [attempt] = detail["history"]
        assert attempt["status_code"] == 200
        assert attempt["response_body"] == "ok"
        assert attempt["latency_ms"] > 0


async def test_events_reach_only_matching_endpoints(tmp_path: Path, store_url: str) -> None:
    async with receiver() as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        await svc.create_endpoint(url=rec.url("/orders"), user_id="u1", event_types=["order.*"])
        await svc.create_endpoint(url=rec.url("/all"), user_id="u1")
        await svc.create_endpoint(url=rec.url("/other"), user_id="u2")
        await svc.create_endpoint(url=rec.url("/global"), event_types=["payment.failed"])
        await svc.create_endpoint(url=rec.url("/off"), user_id="u1", disabled=True)
        await svc.publish(
            _event("u1", "order.created"),
            _event("u1", "payment.failed"),
            _event("u2", "payment.failed"),
        )
        await rec.wait_for(lambda: len(rec.received) == 6)
        seen = sorted((r.path, orjson.loads(r.body)["event_name"]) for r in rec.received)
        assert seen == [
            ("/all", "order.created"),
            ("/all", "payment.failed"),
            ("/global", "payment.failed"),
            ("/global", "payment.failed"),
            ("/orders", "order.created"),
            ("/other", "payment.failed"),
        ]


async def test_fail_twice_then_succeed_takes_three_attempts_with_growing_gaps(
    tmp_path: Path, store_url: str
) -> None:
    def script(request: Request, n: int) -> Response:
        return Response(b"busy", status_code=500) if n < 2 else Response(b"fine")

    async with receiver(script) as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1")
        [event_id] = await svc.publish(_event())
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "succeeded"
        )
        got = rec.at()
        assert len(got) == 3
        assert {r.headers["webhook-id"] for r in got} == {d["id"]}
        first, second = got[1].at - got[0].at, got[2].at - got[1].at
        # schedule [0, 0.2, 0.5] with ±20 % jitter: gaps ~0.16-0.24 s, then ~0.4-0.6 s
        assert 0.15 < first < second, (first, second)
        detail = await svc.get(f"/v1/deliveries/{d['id']}")
        assert [a["status_code"] for a in detail["history"]] == [500, 500, 200]
        assert detail["history"][0]["response_body"] == "busy"
        assert detail["attempts"] == 3


async def test_retry_after_on_429_is_honoured(tmp_path: Path, store_url: str) -> None:
    def script(request: Request, n: int) -> Response:
        if n == 0:
            return Response(b"slow down", status_code=429, headers={"Retry-After": "2"})
        return Response(b"ok")

    settings = delivery_settings(tmp_path, store_url, retry_schedule=[0, 0.1, 0.1])
    async with receiver(script) as rec, service(settings) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1")
        await svc.publish(_event())
        await rec.wait_for(lambda: len(rec.received) == 2, timeout=30)
        gap = rec.received[1].at - rec.received[0].at
        assert gap >= 1.9, gap  # the schedule alone would have retried after ~0.1 s


async def test_410_gone_disables_the_endpoint(tmp_path: Path, store_url: str) -> None:
    async with (
        receiver(lambda r, n: Response(b"gone", status_code=410)) as rec,
        service(delivery_settings(tmp_path, store_url)) as svc,
    ):
        ep = await svc.create_endpoint(url=rec.url(), user_id="user_1")
        [event_id] = await svc.publish(_event())
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "failed"
        )
        assert d["attempts"] == 1
        async with asyncio.timeout(10):
            while not (await svc.get(f"/v1/endpoints/{ep['id']}"))["disabled"]:
                await asyncio.sleep(0.05)
        got = await svc.get(f"/v1/endpoints/{ep['id']}")
        assert "410" in got["disabled_reason"]
        await svc.publish(_event())  # a disabled endpoint gets no new deliveries
        page = await svc.get("/v1/deliveries", endpoint_id=ep["id"])
        assert len(page["deliveries"]) == 1
        assert len(rec.received) == 1


async def test_exhausted_delivery_lands_in_dead_letters_and_recover_resends(
    tmp_path: Path, store_url: str
) -> None:
    healthy = False

    def script(request: Request, n: int) -> Response:
        return Response(b"ok") if healthy else Response(b"down", status_code=503)

    settings = delivery_settings(tmp_path, store_url, retry_schedule=[0, 0.1])
    async with receiver(script) as rec, service(settings) as svc:
        bus = resources_of(svc.app).require_bus()
        dead = await bus.subscribe(DEAD_LETTER_TOPIC, group=f"dlq-{uuid.uuid4().hex[:8]}")
        ep = await svc.create_endpoint(url=rec.url(), user_id="user_1")
        [event_id] = await svc.publish(_event())
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "failed"
        )
        assert d["attempts"] == 2
        async with asyncio.timeout(20):
            msg = await dead.__anext__()
        msg.ack()
        letter = orjson.loads(msg.payload)
        assert letter["delivery_id"] == d["id"]
        assert letter["event_id"] == event_id
        assert letter["endpoint_id"] == ep["id"]
        assert letter["last_status_code"] == 503
        await dead.close()

        healthy = True
        response = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/recover",
            json={"since": "2000-01-01T00:00:00Z"},
            headers=svc.auth,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"requeued": 1}
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "succeeded"
        )
        assert d["attempts"] == 3
        assert {r.headers["webhook-id"] for r in rec.received} == {d["id"]}


async def test_manual_retry_resends_a_delivery(tmp_path: Path, store_url: str) -> None:
    async with receiver() as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1")
        [event_id] = await svc.publish(_event())
        [d] = await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "succeeded"
        )
        response = await svc.client.post(f"/v1/deliveries/{d['id']}/retry", headers=svc.auth)
        assert response.status_code == 202, response.text
        await rec.wait_for(lambda: len(rec.received) == 2)
        assert {r.headers["webhook-id"] for r in rec.received} == {d["id"]}


async def test_rotation_signs_with_both_secrets(tmp_path: Path, store_url: str) -> None:
    async with receiver() as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        ep = await svc.create_endpoint(url=rec.url(), user_id="user_1")
        response = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/rotate-secret", headers=svc.auth
        )
        assert response.status_code == 200, response.text
        rotated = response.json()
        assert rotated["secret"] != ep["secret"]
        assert rotated["previous_secret_expires_at"] is not None
        await svc.publish(_event())
        await rec.wait_for(lambda: len(rec.received) == 1)
        got = rec.received[0]
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        Webhook(ep["secret"]).verify(got.body, got.headers)
        Webhook(rotated["secret"]).verify(got.body, got.headers)

        # another rotation with an overlap would cut the first secret off before its
        # time (a receiver still on it would fail at once): refused, nothing changed
        again = await svc.client.post(f"/v1/endpoints/{ep['id']}/rotate-secret", headers=svc.auth)
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "rotation_in_progress"
        assert '"overlap_seconds": 0' in again.json()["message"]
        assert rotated["secret"] not in again.text
        response = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/rotate-secret",
            json={"overlap_seconds": 0},
            headers=svc.auth,
        )
        newest = response.json()["secret"]
        await svc.publish(_event())
        await rec.wait_for(lambda: len(rec.received) == 2)
        got = rec.received[1]
        assert len(got.headers["webhook-signature"].split(" ")) == 1
        Webhook(newest).verify(got.body, got.headers)
        with pytest.raises(Exception, match="No matching signature"):
            Webhook(rotated["secret"]).verify(got.body, got.headers)


async def test_an_endpoint_failing_too_long_is_disabled_and_announced(
    tmp_path: Path, store_url: str
) -> None:
    settings = delivery_settings(
        tmp_path, store_url, retry_schedule=[0, 0.2, 0.2, 0.2, 0.2, 0.2], disable_after_seconds=0.5
    )
    async with (
        receiver(lambda r, n: Response(b"no", status_code=500)) as rec,
        service(settings) as svc,
    ):
        bus = resources_of(svc.app).require_bus()
        events = await bus.subscribe("events", group=f"watch-{uuid.uuid4().hex[:8]}")
        ep = await svc.create_endpoint(url=rec.url(), user_id="user_1")
        await svc.publish(_event())
        async with asyncio.timeout(20):
            while True:
                msg = await events.__anext__()
                msg.ack()
                if msg.metadata.get("event_name") == "endpoint.disabled":
                    break
        announced = orjson.loads(msg.payload)
        assert announced["user_id"] == "user_1"
        assert announced["source"] == "system"
        assert announced["payload"]["endpoint_id"] == ep["id"]
        await events.close()
        got = await svc.get(f"/v1/endpoints/{ep['id']}")
        assert got["disabled"] is True
        assert "failed since" in got["disabled_reason"]
        # re-enabling by PATCH clears the failure state
        response = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}", json={"disabled": False}, headers=svc.auth
        )
        assert response.json()["failing_since"] is None
        assert len(rec.received) >= 2


async def test_a_burst_to_one_endpoint_is_fed_as_its_lane_drains(
    tmp_path: Path, store_url: str
) -> None:
    """500 events at once to one endpoint: its lane takes a few dozen, the rest wait in
    the store; with the claimer's poll at a minute, only the lane waking it as it drains
    gets them all out (a hang guard, not a timed assertion)."""
    settings = delivery_settings(
        tmp_path, store_url, poll_interval_seconds=60, concurrency_per_endpoint=4
    )
    async with receiver() as rec, service(settings) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1")
        events = [_event(n=i) for i in range(500)]
        for i in range(0, len(events), 100):
            await svc.publish(*events[i : i + 100])
        await rec.wait_for(lambda: len(rec.received) >= 500, timeout=60, what="the burst")
        assert len({r.headers["webhook-id"] for r in rec.received}) == 500


async def test_a_rate_slower_than_a_leases_spare_time_still_delivers_everything(
    tmp_path: Path,
) -> None:
    """One delivery per 4 s, while a lease leaves 3 s to wait before an attempt must
    start (6 s lease, 1 s timeout, 2 s margin): a job that cannot get a token in time is
    released without spending one, so the endpoint gets every delivery, at its rate.
    (Spending the token on a job then released stalled such an endpoint for good.)"""
    # (the dispatcher's own timing, whatever the store: SQLite only, the run is ~10 s)
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    settings = delivery_settings(tmp_path, store_url, timeout_seconds=1, lease_seconds=6)
    async with receiver() as rec, service(settings) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1", rate_limit=0.25)
        await svc.publish(*(_event(n=i) for i in range(3)))
        await rec.wait_for(lambda: len(rec.received) >= 3, timeout=60, what="3 rate-limited")
        assert len({r.headers["webhook-id"] for r in rec.received}) == 3
        gaps = [b.at - a.at for a, b in zip(rec.received, rec.received[1:], strict=False)]
        assert all(gap >= 4 * 0.9 for gap in gaps), gaps  # the rate held (leaky bucket)


async def test_a_delivery_continues_the_trace_of_the_request_that_published_it(
    tmp_path: Path, store_url: str
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with receiver() as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        await svc.create_endpoint(url=rec.url(), user_id="user_1")
        answer = await svc.client.post(
            "/v1/events", json=_event(), headers={**svc.auth, "traceparent": incoming}
        )
        assert answer.status_code == 200, answer.text
        await svc.publish(_event())  # no traceparent: a trace of its own
        await rec.wait_for(lambda: len(rec.received) == 2)
        parents = {orjson.loads(r.body)["id"]: r.headers["traceparent"] for r in rec.received}
        traced = parents[answer.json()["ids"][0]]
        version, trace, span, flags = traced.split("-")
        assert (version, trace, flags) == ("00", trace_id, "01")
        assert span != "00f067aa0ba902b7"  # eventmill's own hop
        others = [p for i, p in parents.items() if i != answer.json()["ids"][0]]
        assert others[0].split("-")[1] != trace_id
