"""The endpoint and delivery API: CRUD, validation, cursors, and end users' isolation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.responses import Response

from eventmill.delivery._ids import new_id
from eventmill.delivery.store import encode_cursor
from tests.delivery.support import Service, delivery_settings, receiver, service

JWT_SECRET = "delivery-tests-jwt-secret-0123456789abcdef"


def _token(user: str) -> dict[str, str]:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
    return {"Authorization": f"Bearer {token}"}


def _settings(tmp: Path, store_url: str, **delivery: Any) -> Any:
    from eventmill.web.tokens import JwtSettings

    settings = delivery_settings(tmp, store_url, **delivery)
    return settings.model_copy(update={"jwt": JwtSettings(secret=JWT_SECRET)})


async def test_endpoint_crud_and_cursor(tmp_path: Path, store_url: str) -> None:
    async with service(delivery_settings(tmp_path, store_url)) as svc:
        made = [
            await svc.create_endpoint(url=f"https://example.com/{i}", user_id="u1")
            for i in range(5)
        ]
        first = await svc.get("/v1/endpoints", user_id="u1", limit=2)
        assert [e["id"] for e in first["endpoints"]] == [made[4]["id"], made[3]["id"]]
        assert first["has_more"]
        assert "secret" not in first["endpoints"][0]
        rest = await svc.get("/v1/endpoints", user_id="u1", cursor=first["next_cursor"])
        assert [e["id"] for e in rest["endpoints"]] == [m["id"] for m in made[2::-1]]
        assert not rest["has_more"]

        ep = made[0]
        response = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}",
            json={"event_types": ["order.*"], "description": "orders", "rate_limit": 5},
            headers=svc.auth,
        )
        assert response.status_code == 200, response.text
        assert response.json()["event_types"] == ["order.*"]
        assert response.json()["rate_limit"] == 5
        response = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}", json={"disabled": True}, headers=svc.auth
        )
        assert response.json()["disabled"] is True
        response = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}", json={"disabled": False}, headers=svc.auth
        )
        assert response.json()["disabled"] is False
        assert response.json()["disabled_reason"] is None
        response = await svc.client.delete(f"/v1/endpoints/{ep['id']}", headers=svc.auth)
        assert response.status_code == 204
        response = await svc.client.get(f"/v1/endpoints/{ep['id']}", headers=svc.auth)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


async def test_a_cursor_of_another_listing_is_400_naming_it(tmp_path: Path, store_url: str) -> None:
    """Every cursor holds the id (``ep_``, ``dlv_``) or the position it continues after:
    one listing's cursor given to another was taken as a place in it."""
    async with service(delivery_settings(tmp_path, store_url)) as svc:
        for i in range(2):
            await svc.create_endpoint(url=f"https://example.com/{i}")
        await svc.publish({"event_name": "x.y"}, {"event_name": "x.z"})
        endpoints = (await svc.get("/v1/endpoints", limit=1))["next_cursor"]
        events = (await svc.get("/v1/events", limit=1))["next_cursor"]
        deliveries = encode_cursor(new_id("dlv"))  # as list_deliveries makes them
        for path, cursor, owner in (
            ("/v1/deliveries", endpoints, "the endpoints listing"),
            ("/v1/deliveries", events, "the events listing"),
            ("/v1/endpoints", deliveries, "the deliveries listing"),
            ("/v1/endpoints", events, "the events listing"),
            ("/v1/events", endpoints, "another listing"),
            ("/v1/events", deliveries, "another listing"),
        ):
            r = await svc.client.get(path, params={"cursor": cursor}, headers=svc.auth)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"] == "invalid_cursor"
            assert f"this cursor belongs to {owner}" in r.json()["message"], path
        for path, cursor in (("/v1/endpoints", endpoints), ("/v1/events", events)):
            r = await svc.client.get(path, params={"cursor": cursor}, headers=svc.auth)
            assert r.status_code == 200, (path, r.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "https://user:pw@example.com/x"}, "url"),
        ({"url": "http://10.0.0.1/x"}, "url"),
        ({"url": "http://169.254.169.254/latest"}, "url"),
        ({"url": "https://example.com", "event_types": ["bad name!"]}, "event_types"),
        ({"url": "https://example.com", "headers": {"webhook-id": "x"}}, "headers"),
        ({"url": "https://example.com", "headers": {"X-A": "a\r\nb"}}, "headers"),
        ({"url": "https://example.com", "rate_limit": 0}, "rate_limit"),
        # what no database column holds, what no request can carry, what is not a flag
        ({"url": "https://example.com", "user_id": "a\u0000b"}, "user_id"),
        ({"url": "https://example.com", "user_id": "a\nb"}, "user_id"),
        ({"url": "https://example.com", "description": "a\u0000b"}, "description"),
        ({"url": "https://example.com", "headers": {"X-A": "\u0001"}}, "headers"),
        ({"url": "https://example.com", "headers": {"traceparent": "00-x"}}, "headers"),
        ({"url": "https://example.com", "disabled": "yes"}, "disabled"),
        ({"url": "http://127.0.0.1:99999/x"}, "url"),
        ({"url": "http://exa mple.com/x"}, "url"),
        ({"url": "https://example.com", "colour": "blue"}, "colour"),
        ({"url": "https://example.com", "headers": {"X-A": "b", "x-a": "c"}}, "headers"),
    ],
)
async def test_bad_endpoints_are_422_naming_the_field(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async with service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc:
        response = await svc.client.post("/v1/endpoints", json=body, headers=svc.auth)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error"] == "validation_failed"
        assert field in {d["field"] for d in error["details"]}, error


async def test_malformed_bodies_and_auth(tmp_path: Path) -> None:
    async with service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc:
        response = await svc.client.post(
            "/v1/endpoints",
            content=b"{nope",
            headers={**svc.auth, "content-type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"] == "malformed_json"
        response = await svc.client.get("/v1/endpoints")
        assert response.status_code == 401
        response = await svc.client.get("/v1/deliveries", params={"cursor": "@@"}, headers=svc.auth)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_cursor"


async def test_https_only_refuses_http_urls(tmp_path: Path) -> None:
    settings = delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}", https_only=True)
    async with service(settings) as svc:
        response = await svc.client.post(
            "/v1/endpoints", json={"url": "http://example.com/x"}, headers=svc.auth
        )
        assert response.status_code == 422
        assert "https" in response.json()["message"]


async def _setup_two_users(svc: Service, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    a = await svc.client.post("/v1/endpoints", json={"url": url}, headers=_token("alice"))
    b = await svc.client.post("/v1/endpoints", json={"url": url}, headers=_token("bob"))
    assert a.status_code == 201, a.text
    assert b.status_code == 201, b.text
    assert a.json()["user_id"] == "alice"
    return a.json(), b.json()


@pytest.mark.parametrize("user", ["x" * 1000, "a\x00b"])
async def test_a_token_whose_subject_is_not_a_valid_user_id_creates_nothing(
    tmp_path: Path, store_url: str, user: str
) -> None:
    async with service(_settings(tmp_path, store_url)) as svc:
        headers = _token(user)
        r = await svc.client.post(
            "/v1/endpoints", json={"url": "https://example.com/h"}, headers=headers
        )
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "token_no_subject"
        assert "not a valid user id" in r.json()["message"]
        assert headers["Authorization"].removeprefix("Bearer ") not in r.text
        assert (await svc.get("/v1/endpoints"))["endpoints"] == []


async def test_end_users_see_and_change_only_their_own(tmp_path: Path, store_url: str) -> None:
    async with receiver() as rec, service(_settings(tmp_path, store_url)) as svc:
        alice_ep, bob_ep = await _setup_two_users(svc, rec.url())
        await svc.publish(
            {"event_name": "x.y", "user_id": "alice"}, {"event_name": "x.y", "user_id": "bob"}
        )
        await rec.wait_for(lambda: len(rec.received) == 2)
        alice = _token("alice")
        listed = (await svc.client.get("/v1/endpoints", headers=alice)).json()
        assert [e["id"] for e in listed["endpoints"]] == [alice_ep["id"]]
        deliveries = (await svc.client.get("/v1/deliveries", headers=alice)).json()["deliveries"]
        assert [d["endpoint_id"] for d in deliveries] == [alice_ep["id"]]
        [bob_delivery] = (await svc.get("/v1/deliveries", endpoint_id=bob_ep["id"]))["deliveries"]

        bob_id = bob_ep["id"]
        forbidden = [
            await svc.client.get(f"/v1/endpoints/{bob_id}", headers=alice),
            await svc.client.patch(
                f"/v1/endpoints/{bob_id}", json={"disabled": True}, headers=alice
            ),
            await svc.client.delete(f"/v1/endpoints/{bob_id}", headers=alice),
            await svc.client.post(f"/v1/endpoints/{bob_id}/rotate-secret", headers=alice),
            await svc.client.post(
                f"/v1/endpoints/{bob_id}/recover",
                json={"since": "2000-01-01T00:00:00Z"},
                headers=alice,
            ),
            await svc.client.get("/v1/endpoints", params={"user_id": "bob"}, headers=alice),
            await svc.client.get("/v1/deliveries", params={"endpoint_id": bob_id}, headers=alice),
            await svc.client.get("/v1/deliveries", params={"user_id": "bob"}, headers=alice),
            await svc.client.get(f"/v1/deliveries/{bob_delivery['id']}", headers=alice),
            await svc.client.post(f"/v1/deliveries/{bob_delivery['id']}/retry", headers=alice),
        ]
        assert [r.status_code for r in forbidden] == [404] * len(forbidden)
        assert all(r.json()["error"] == "not_found" for r in forbidden)
        # unknown ids answer exactly the same
        unknown = await svc.client.get("/v1/endpoints/ep_UNKNOWN", headers=alice)
        assert (
            unknown.json()["message"].replace("ep_UNKNOWN", bob_id)
            == forbidden[0].json()["message"]
        )
        # bob's endpoint is untouched
        still = await svc.get(f"/v1/endpoints/{bob_id}")
        assert still["disabled"] is False
        # alice cannot create an endpoint for bob
        response = await svc.client.post(
            "/v1/endpoints", json={"url": rec.url(), "user_id": "bob"}, headers=alice
        )
        assert response.status_code == 403
        # but manages her own
        response = await svc.client.patch(
            f"/v1/endpoints/{alice_ep['id']}", json={"description": "mine"}, headers=alice
        )
        assert response.status_code == 200


async def test_an_operators_token_sees_and_retries_every_users_deliveries(
    tmp_path: Path, store_url: str
) -> None:
    """The dashboard's token (claim ``all_users``): every user's deliveries and their
    attempts, and retry; endpoints stay their owner's and the admin key's."""
    async with receiver() as rec, service(_settings(tmp_path, store_url)) as svc:
        alice_ep, bob_ep = await _setup_two_users(svc, rec.url())
        await svc.publish(
            {"event_name": "x.y", "user_id": "alice"}, {"event_name": "x.y", "user_id": "bob"}
        )
        await rec.wait_for(lambda: len(rec.received) == 2)
        # the receiver answered; the attempts are recorded right after
        await svc.wait_delivery(
            {}, lambda found: len(found) == 2 and all(d["attempts"] == 1 for d in found)
        )
        token = jwt.encode(
            {"sub": "ops", "exp": int(time.time()) + 600, "eventmill": {"all_users": True}},
            JWT_SECRET,
            "HS256",
        )
        ops = {"Authorization": f"Bearer {token}"}
        listed = (await svc.client.get("/v1/deliveries", headers=ops)).json()["deliveries"]
        assert sorted(d["endpoint_id"] for d in listed) == sorted([alice_ep["id"], bob_ep["id"]])
        [bob_delivery] = (
            await svc.client.get("/v1/deliveries", params={"user_id": "bob"}, headers=ops)
        ).json()["deliveries"]
        by_endpoint = await svc.client.get(
            "/v1/deliveries", params={"endpoint_id": bob_ep["id"]}, headers=ops
        )
        assert [d["id"] for d in by_endpoint.json()["deliveries"]] == [bob_delivery["id"]]
        detail = await svc.client.get(f"/v1/deliveries/{bob_delivery['id']}", headers=ops)
        assert detail.status_code == 200
        assert len(detail.json()["history"]) == 1
        retried = await svc.client.post(f"/v1/deliveries/{bob_delivery['id']}/retry", headers=ops)
        assert retried.status_code == 202, retried.text
        await rec.wait_for(lambda: len(rec.received) == 3)

        # endpoints are not the operator token's to see or change
        endpoints = [
            await svc.client.get("/v1/endpoints", headers=ops),
            await svc.client.get(f"/v1/endpoints/{bob_ep['id']}", headers=ops),
            await svc.client.delete(f"/v1/endpoints/{bob_ep['id']}", headers=ops),
        ]
        assert endpoints[0].json()["endpoints"] == []
        assert [r.status_code for r in endpoints[1:]] == [404, 404]


async def test_recover_takes_times_with_and_without_an_offset_and_numbers_as_seconds(
    tmp_path: Path,
) -> None:
    """``since`` without an offset (UTC) beside ``until`` with one was compared as a naive
    and an aware time: a 500. A number is Unix seconds (pydantic read one past 2e10 as
    milliseconds: 253402300800 became 1978)."""
    async with service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc:
        ep = await svc.create_endpoint(url="http://127.0.0.1:9/hook", user_id="u1")
        path = f"/v1/endpoints/{ep['id']}/recover"
        answers = [
            await svc.client.post(path, json=body, headers=svc.auth)
            for body in (
                {"since": "2026-12-07T00:00:00", "until": "2026-12-08T00:00:00+05:30"},
                {"since": 1765065600, "until": "2026-12-08T00:00:00Z"},
                {"since": 253402300800},
            )
        ]
    assert [a.status_code for a in answers] == [200, 200, 422], [a.text for a in answers]
    assert "outside the years 1-9999 in UTC" in answers[2].json()["message"]


async def test_a_key_without_admin_scope_is_403(tmp_path: Path) -> None:
    from eventmill.app import resources_of

    async with service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc:
        _, key = await resources_of(svc.app).require_keys().create("reader", {"read"})
        response = await svc.client.get("/v1/endpoints", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 403


async def test_a_nul_in_a_filter_or_an_id_matches_nothing(tmp_path: Path, store_url: str) -> None:
    async with service(delivery_settings(tmp_path, store_url)) as svc:
        for path in ("/v1/endpoints/%00", "/v1/deliveries/%00"):
            r = await svc.client.get(path, headers=svc.auth)
            assert r.status_code == 404, r.text
        endpoints = await svc.get("/v1/endpoints", user_id="a\x00b")
        assert endpoints["endpoints"] == []
        deliveries = await svc.get("/v1/deliveries", user_id="a\x00b", event_id="\x00")
        assert deliveries["deliveries"] == []


async def test_a_retry_while_an_attempt_sends_the_delivery_is_409_and_changes_nothing(
    tmp_path: Path, store_url: str
) -> None:
    """The receiver holds the first attempt open; a retry meanwhile is refused (409,
    saying why and where the outcome shows), the attempt's outcome stands, and a retry
    after it is queued as ever."""
    release = asyncio.Event()

    async def hold_first(request: Any, n: int) -> Response:
        if n == 0:
            await release.wait()
        return Response(b"ok", status_code=200)

    async with (
        receiver(hold_first) as rec,
        service(delivery_settings(tmp_path, store_url)) as svc,
    ):
        await svc.create_endpoint(url=rec.url(), user_id="u1")
        await svc.publish({"event_name": "x.y", "user_id": "u1"})
        await rec.wait_for(lambda: len(rec.received) == 1)  # the attempt is in flight
        [delivery] = (await svc.get("/v1/deliveries", user_id="u1"))["deliveries"]
        refused = await svc.client.post(f"/v1/deliveries/{delivery['id']}/retry", headers=svc.auth)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "delivery_in_flight"
        assert f"GET /v1/deliveries/{delivery['id']}" in refused.json()["message"]
        release.set()
        [done] = await svc.wait_delivery(
            {"user_id": "u1"}, lambda found: found[0]["status"] == "succeeded"
        )
        assert done["attempts"] == 1  # the refused retry added no round
        again = await svc.client.post(f"/v1/deliveries/{delivery['id']}/retry", headers=svc.auth)
        assert again.status_code == 202, again.text
        await rec.wait_for(lambda: len(rec.received) == 2)
        assert len(rec.received) == 2


async def test_a_disabled_endpoints_deliveries_are_not_retried_or_recovered(
    tmp_path: Path, store_url: str
) -> None:
    """Retry and recover on a disabled endpoint answer 409 endpoint_disabled (nothing
    would be sent) and change nothing; a delivery parked by the disable keeps its last
    attempt's status code and time; once enabled, retry works again."""

    async def failing(request: Any, n: int) -> Response:
        return Response(b"no", status_code=500)

    # the second attempt is due 2 s after the first: the disable lands before it, and
    # the dispatcher parks the delivery when it comes due
    settings = delivery_settings(tmp_path, store_url, retry_schedule=[0, 2, 2])
    async with receiver(failing) as rec, service(settings) as svc:
        ep = await svc.create_endpoint(url=rec.url(), user_id="u1")
        await svc.publish({"event_name": "x.y", "user_id": "u1"})
        [tried] = await svc.wait_delivery(
            {"user_id": "u1"}, lambda found: bool(found) and found[0]["attempts"] == 1
        )
        assert tried["last_status_code"] == 500
        patched = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}", json={"disabled": True}, headers=svc.auth
        )
        assert patched.status_code == 200, patched.text
        [parked] = await svc.wait_delivery(
            {"user_id": "u1"}, lambda found: found[0]["status"] == "failed"
        )
        assert parked["last_status_code"] == 500  # the last attempt's, not the parking's
        assert parked["last_attempt_at"] == tried["last_attempt_at"]
        assert parked["last_error"] == "disabled by request"

        retry = await svc.client.post(f"/v1/deliveries/{parked['id']}/retry", headers=svc.auth)
        assert retry.status_code == 409, retry.text
        assert retry.json()["error"] == "endpoint_disabled"
        assert f"PATCH /v1/endpoints/{ep['id']}" in retry.json()["message"]
        recover = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/recover",
            json={"since": "2020-01-01T00:00:00Z"},
            headers=svc.auth,
        )
        assert recover.status_code == 409, recover.text
        assert recover.json()["error"] == "endpoint_disabled"
        [still] = (await svc.get("/v1/deliveries", user_id="u1"))["deliveries"]
        assert (still["status"], still["attempts"]) == ("failed", 1)

        reversed_range = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/recover",
            json={"since": "2026-12-07T00:00:00Z", "until": "2026-12-06T00:00:00Z"},
            headers=svc.auth,
        )
        assert reversed_range.status_code == 422, reversed_range.text
        assert "until must be after since" in reversed_range.json()["message"]

        enabled = await svc.client.patch(
            f"/v1/endpoints/{ep['id']}", json={"disabled": False}, headers=svc.auth
        )
        assert enabled.status_code == 200, enabled.text
        retry = await svc.client.post(f"/v1/deliveries/{parked['id']}/retry", headers=svc.auth)
        assert retry.status_code == 202, retry.text
        await rec.wait_for(lambda: len(rec.received) == 2)


async def test_finished_at_is_when_the_last_attempt_ended(tmp_path: Path) -> None:
    """It was the last attempt's start: a 12 s attempt "finished" when it began."""
    from datetime import datetime, timedelta

    async def slow(request: Any, n: int) -> Response:
        await asyncio.sleep(0.5)
        return Response(b"ok", status_code=200)

    async with (
        receiver(slow) as rec,
        service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc,
    ):
        await svc.create_endpoint(url=rec.url(), user_id="u1")
        await svc.publish({"event_name": "x.y", "user_id": "u1"})
        [done] = await svc.wait_delivery(
            {"user_id": "u1"}, lambda found: bool(found) and found[0]["status"] == "succeeded"
        )
    started = datetime.fromisoformat(done["last_attempt_at"])
    finished = datetime.fromisoformat(done["finished_at"])
    assert finished - started >= timedelta(seconds=0.5)


async def test_a_replay_gives_a_re_enabled_endpoint_what_it_missed_and_no_one_twice(
    tmp_path: Path,
) -> None:
    """The documented way to send a re-enabled endpoint the events published while it
    was disabled (they made no delivery for it): replay the span; an endpoint that got
    them already gets nothing twice (one delivery per event and endpoint)."""
    async with (
        receiver() as rec,
        service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc,
    ):
        paused = await svc.create_endpoint(url=rec.url("/paused"), user_id="u1")
        steady = await svc.create_endpoint(url=rec.url("/steady"), user_id="u1")
        off = await svc.client.patch(
            f"/v1/endpoints/{paused['id']}", json={"disabled": True}, headers=svc.auth
        )
        assert off.status_code == 200, off.text
        [event_id] = await svc.publish({"event_name": "x.y", "user_id": "u1"})
        await rec.wait_for(lambda: len(rec.at("/steady")) == 1)
        on = await svc.client.patch(
            f"/v1/endpoints/{paused['id']}", json={"disabled": False}, headers=svc.auth
        )
        assert on.status_code == 200, on.text
        replayed = await svc.client.post("/v1/replay", json={}, headers=svc.auth)
        assert replayed.status_code == 200, replayed.text
        await rec.wait_for(lambda: len(rec.at("/paused")) == 1)
        deliveries = await svc.wait_delivery(
            {"event_id": event_id},
            lambda found: len(found) == 2 and all(d["status"] == "succeeded" for d in found),
        )
    assert sorted(d["endpoint_id"] for d in deliveries) == sorted([paused["id"], steady["id"]])
    assert len(rec.at("/steady")) == 1  # not sent again


async def test_a_rotations_overlap_end_is_shown_only_while_it_lasts(tmp_path: Path) -> None:
    """Once the overlap is over the previous secret no longer signs: the endpoint said
    ``previous_secret_expires_at`` in the past for good."""
    from datetime import UTC, datetime

    async with service(delivery_settings(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")) as svc:
        ep = await svc.create_endpoint(url="http://127.0.0.1:9/hook", user_id="u1")
        rotated = await svc.client.post(
            f"/v1/endpoints/{ep['id']}/rotate-secret",
            json={"overlap_seconds": 1},
            headers=svc.auth,
        )
        assert rotated.status_code == 200, rotated.text
        expires = datetime.fromisoformat(rotated.json()["previous_secret_expires_at"])
        shown = await svc.get(f"/v1/endpoints/{ep['id']}")
        assert datetime.fromisoformat(shown["previous_secret_expires_at"]) == expires
        async with asyncio.timeout(15):
            while datetime.now(UTC) <= expires:
                await asyncio.sleep(0.05)
        after = await svc.get(f"/v1/endpoints/{ep['id']}")
    assert after["previous_secret_expires_at"] is None
