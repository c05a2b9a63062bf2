"""Payload builders: pattern precedence, configuration, and a raising builder."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from eventmill.delivery.builders import BuilderError, PayloadBuilders, builders_from
from eventmill.errors import ConfigurationError
from eventmill.events import Event
from tests.delivery.support import delivery_settings, receiver, service


def test_most_specific_pattern_wins_and_unmatched_send_the_envelope() -> None:
    table = PayloadBuilders()
    table.register("order.*", lambda e: {"b": "pattern"})
    table.register("order.paid.*", lambda e: {"b": "longer"})
    table.register("order.paid.late", lambda e: {"b": "exact"})
    envelope = Event(event_name="order.paid.late").to_json()
    assert orjson.loads(table.build("order.paid.late", envelope)) == {"b": "exact"}
    envelope = Event(event_name="order.paid.x").to_json()
    assert orjson.loads(table.build("order.paid.x", envelope)) == {"b": "longer"}
    envelope = Event(event_name="order.new").to_json()
    assert orjson.loads(table.build("order.new", envelope)) == {"b": "pattern"}
    envelope = Event(event_name="refund.done").to_json()
    assert table.build("refund.done", envelope) is envelope
    with pytest.raises(ConfigurationError, match="already registered"):
        table.register("order.*", lambda e: {})


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="cannot import"):
        builders_from({"x.*": "no_such_module_here:f"})
    with pytest.raises(ConfigurationError, match="no attribute"):
        builders_from({"x.*": "tests.delivery.sample_builders:missing"})


def test_a_raising_builder_names_itself() -> None:
    table = builders_from({"x.*": "tests.delivery.sample_builders:broken"})
    with pytest.raises(BuilderError, match=r"broken \(x\.\*\) failed: KeyError"):
        table.build("x.y", Event(event_name="x.y").to_json())


async def test_configured_builders_shape_bodies_and_a_raising_one_parks_its_delivery(
    tmp_path: Path, store_url: str
) -> None:
    settings = delivery_settings(
        tmp_path,
        store_url,
        builders={
            "order.*": "tests.delivery.sample_builders:order_summary",
            "text.*": "tests.delivery.sample_builders:raw_text",
            "refund.*": "tests.delivery.sample_builders:broken",
        },
    )
    async with receiver() as rec, service(settings) as svc:
        ep = await svc.create_endpoint(url=rec.url(), user_id="u1")
        _order, _text, refund, other = await svc.publish(
            {"event_name": "order.paid", "user_id": "u1", "payload": {"order": "o_1"}},
            {"event_name": "text.note", "user_id": "u1"},
            {"event_name": "refund.done", "user_id": "u1"},
            {"event_name": "misc.thing", "user_id": "u1"},
        )
        await rec.wait_for(lambda: len(rec.received) == 3)
        bodies = {}
        for got in rec.received:
            Webhook(ep["secret"]).verify(got.body, got.headers)
            bodies[got.headers["webhook-id"]] = orjson.loads(got.body)
        assert {"type": "order.paid", "order": "o_1", "user": "u1"} in bodies.values()
        assert {"raw": True} in bodies.values()
        assert any(b.get("id") == other for b in bodies.values())  # the envelope
        [parked] = await svc.wait_delivery(
            {"event_id": refund}, lambda ds: bool(ds) and ds[0]["status"] == "failed"
        )
        assert "KeyError" in parked["last_error"]
        assert parked["attempts"] == 1
        detail = await svc.get(f"/v1/deliveries/{parked['id']}")
        assert detail["history"][0]["outcome"] == "builder_error"
