"""Transformers: provider bodies -> Events, with configurable user mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from eventmill.errors import ConfigurationError, EventValidationError
from eventmill.events import (
    EventRegistry,
    RazorpayTransformer,
    WebhookInput,
    resolve_path,
    transformer_for,
)
from eventmill.events.transform import flatten_razorpay_entities
from tests.payloads import (
    SEED_FLAT_PAYMENT,
    order_paid,
    payment_captured,
    payment_event,
    refund_event,
)

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)


def rzp(body: Any, **kwargs: Any) -> WebhookInput:
    return WebhookInput(
        source="razorpay", body=body, external_id="evt_ext_1", received_at=RECEIVED, **kwargs
    )


def test_razorpay_payment_maps_notes_user_id() -> None:
    body = payment_event(notes={"user_id": "user_123"})
    event = RazorpayTransformer()(rzp(body))
    assert event.event_name == "razorpay.payment.captured"
    assert event.source == "razorpay"
    assert event.user_id == "user_123"
    assert event.payload == {**body, "payment": body["payload"]["payment"]["entity"]}
    assert event.created_at == datetime.fromtimestamp(1567674606, UTC)
    EventRegistry.default(allow_unknown=False).validate(event)


def test_razorpay_falls_back_to_account_id() -> None:
    event = RazorpayTransformer()(rzp(payment_event()))  # notes == []
    assert event.user_id == "acc_BFQ7uQEaa7j2z7"


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "\x7f", "", "x" * 257, True, 1.5])
def test_a_note_that_is_no_valid_user_id_falls_through_to_the_account(bad: object) -> None:
    """Notes are the merchant's free-form data: a value that cannot be a user id is
    skipped (the webhook is not refused, which Razorpay's retries could never fix)."""
    event = RazorpayTransformer()(rzp(payment_event(notes={"user_id": bad})))
    assert event.user_id == "acc_BFQ7uQEaa7j2z7"


def test_razorpay_order_paid_uses_the_order_notes() -> None:
    event = RazorpayTransformer()(rzp(order_paid(user_id="user_42")))
    assert event.event_name == "razorpay.order.paid"
    assert event.user_id == "user_42"


def test_razorpay_refund_entity_is_the_refund() -> None:
    body = refund_event()
    body["payload"]["refund"]["entity"]["notes"] = {"user_id": 987}
    event = RazorpayTransformer()(rzp(body))
    assert event.event_name == "razorpay.refund.processed"
    assert event.user_id == "987"


def test_razorpay_seed_flat_shape() -> None:
    event = RazorpayTransformer()(rzp(SEED_FLAT_PAYMENT))
    assert event.event_name == "razorpay.payment.captured"
    assert event.user_id == "acc_123"
    assert event.created_at == RECEIVED  # no created_at in the body
    EventRegistry.default(allow_unknown=False).validate(event)


def test_razorpay_payload_carries_its_entities_flattened_beside_the_body() -> None:
    body = order_paid(user_id="user_42")
    event = RazorpayTransformer()(rzp(body))
    payload = event.payload
    # the body's own fields, all kept as they were
    assert {k: payload[k] for k in body} == body
    # and each entity of payload.<kind>.entity at the top, as the system description shows
    assert set(payload) - set(body) == {"payment", "order"}
    assert payload["payment"] == body["payload"]["payment"]["entity"]
    assert payload["order"] == body["payload"]["order"]["entity"]
    assert payload["payment"]["amount"] == 100  # the snippet's eventData.payload.payment.amount
    EventRegistry.default(allow_unknown=False).validate(event)


def test_razorpay_refund_flattens_refund_and_payment() -> None:
    body = refund_event()
    payload = RazorpayTransformer()(rzp(body)).payload
    assert payload["refund"] == body["payload"]["refund"]["entity"]
    assert payload["payment"]["refund_status"] == "full"
    assert payload["payload"] == body["payload"]


def test_flattening_never_replaces_a_top_level_field() -> None:
    body = payment_captured()
    body["payment"] = "the body's own"  # a top-level key the body already has wins
    assert flatten_razorpay_entities(body)["payment"] == "the body's own"
    # the flat example shape has no payload: it stays exactly as sent
    assert flatten_razorpay_entities(SEED_FLAT_PAYMENT) == SEED_FLAT_PAYMENT
    assert RazorpayTransformer()(rzp(SEED_FLAT_PAYMENT)).payload == SEED_FLAT_PAYMENT
    # entries of payload that are not {"entity": {...}} are not flattened
    odd = {"event": "x.y", "payload": {"a": [], "b": {"entity": "str"}, "c": {"id": 1}}}
    assert flatten_razorpay_entities(odd) == odd
    # the input is not modified
    fresh = payment_captured()
    flatten_razorpay_entities(fresh)
    assert fresh == payment_captured()


def test_razorpay_custom_paths_in_order() -> None:
    body = payment_event(notes={"merchant_user": "m1", "user_id": "u1"}, email="e@x.com")
    first = RazorpayTransformer(user_id_paths=("$entity.notes.merchant_user", "account_id"))
    assert first(rzp(body)).user_id == "m1"
    by_email = RazorpayTransformer(user_id_paths=("payload.payment.entity.email",))
    assert by_email(rzp(body)).user_id == "e@x.com"
    none = RazorpayTransformer(user_id_paths=("$entity.notes.missing",))
    assert none(rzp(body)).user_id is None
    assert transformer_for("razorpay", ("account_id",))(rzp(body)).user_id == "acc_BFQ7uQEaa7j2z7"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], None),
        ({"entity": "event"}, "event"),
        ({"event": ""}, "event"),
        ({"event": "bad name!"}, "event_name"),
    ],
)
def test_razorpay_rejects_bodies_without_a_usable_event(body: Any, field: str | None) -> None:
    with pytest.raises(EventValidationError) as info:
        RazorpayTransformer()(rzp(body))
    assert info.value.field == field


def test_github_name_from_header_and_action() -> None:
    transform = transformer_for("github", ("sender.login",))
    inp = WebhookInput(
        source="github",
        body={"action": "opened", "sender": {"login": "octocat"}},
        external_id="delivery-1",
        headers={"x-github-event": "pull_request"},
    )
    event = transform(inp)
    assert event.event_name == "github.pull_request.opened"
    assert event.user_id == "octocat"
    push = transform(
        WebhookInput(source="github", body={"ref": "x"}, headers={"x-github-event": "push"})
    )
    assert push.event_name == "github.push"


def test_stripe_name_from_type_and_user_from_metadata() -> None:
    body = {
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {"object": {"metadata": {"user_id": "user_789"}}},
    }
    event = transformer_for("stripe")(WebhookInput(source="stripe", body=body, external_id="evt_1"))
    assert event.event_name == "stripe.payment_intent.succeeded"
    assert event.user_id == "user_789"


def test_standard_and_generic_hmac() -> None:
    std = transformer_for("standard")(WebhookInput(source="acme", body={"type": "invoice.paid"}))
    assert std.event_name == "acme.invoice.paid"
    generic = transformer_for("hmac", ("customer.id",))
    event = generic(
        WebhookInput(source="shop", body={"event": "order.shipped", "customer": {"id": 5}})
    )
    assert (event.event_name, event.user_id) == ("shop.order.shipped", "5")
    fallback = generic(WebhookInput(source="shop", body=["not", "an", "object"]))
    assert fallback.event_name == "shop.webhook"


def test_unknown_scheme_and_bad_paths_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        transformer_for("carrier-pigeon")
    with pytest.raises(ConfigurationError):
        RazorpayTransformer(user_id_paths=("a..b",))
    with pytest.raises(ConfigurationError):
        transformer_for("hmac", ("",))


def test_resolve_path() -> None:
    data = {"a": {"b": [{"c": 1}, {"c": 2}]}, "n": None}
    assert resolve_path(data, "a.b.1.c") == 2
    assert resolve_path(data, "a.b.5.c") is None
    assert resolve_path(data, "a.x") is None
    assert resolve_path(data, "n.x") is None
    assert resolve_path([1, 2], "0") == 1


@pytest.mark.parametrize(
    ("kind", "body", "headers", "origin"),
    [
        ("github", {"ref": "x"}, {"x-github-event": "pull request"}, "header x-github-event"),
        (
            "github",
            {"action": "re opened"},
            {"x-github-event": "issues"},
            "header x-github-event and body field 'action'",
        ),
        ("standard", {"type": "a b"}, {}, "body field 'type'"),
        ("razorpay", {"event": "payment captured", "payload": {}}, {}, "body field 'event'"),
    ],
)
def test_a_name_that_is_no_event_name_is_refused_naming_where_it_came_from(
    kind: str, body: dict[str, Any], headers: dict[str, str], origin: str
) -> None:
    """It said only "github event name is not a valid event name"."""
    with pytest.raises(EventValidationError) as refused:
        transformer_for(kind)(WebhookInput(source=kind, body=body, headers=headers))
    assert f"made from {origin} is not a valid event name" in str(refused.value)
