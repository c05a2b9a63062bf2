"""Built-in payload models on real-shaped webhook bodies."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from eventmill.events import (
    PaymentProcessed,
    RazorpayOrderPaidEvent,
    RazorpayPaymentEvent,
    RazorpayRefundEvent,
    RazorpayWebhook,
    UserCreated,
)
from tests.payloads import (
    SEED_FLAT_PAYMENT,
    order_paid,
    payment_event,
    refund_event,
)


@pytest.mark.parametrize("name", ["payment.authorized", "payment.captured", "payment.failed"])
def test_payment_events(name: str) -> None:
    status = name.split(".")[1]
    body = payment_event(name, status=status, error_code="BAD_REQUEST_ERROR")
    parsed = RazorpayPaymentEvent.model_validate(body)
    assert parsed.event == name
    assert parsed.payment.status == status
    assert parsed.payment.amount == 100
    assert parsed.payment.notes == {}  # Razorpay's empty notes "[]"
    assert parsed.payment.error_code == "BAD_REQUEST_ERROR"
    assert parsed.account_id == "acc_BFQ7uQEaa7j2z7"
    # fields the model does not declare are kept
    dumped = parsed.model_dump()
    assert dumped["payload"]["payment"]["entity"]["base_amount"] == 100
    assert dumped["payload"]["payment"]["entity"]["acquirer_data"] == {
        "bank_transaction_id": "0125836177"
    }


def test_order_paid() -> None:
    parsed = RazorpayOrderPaidEvent.model_validate(order_paid(user_id="user_42"))
    assert parsed.order.status == "paid"
    assert parsed.order.notes == {"user_id": "user_42"}
    assert parsed.payment.id == "pay_DESlfW9H8K9uqM"


@pytest.mark.parametrize("name", ["refund.created", "refund.processed"])
def test_refund_events(name: str) -> None:
    parsed = RazorpayRefundEvent.model_validate(refund_event(name))
    assert parsed.refund.payment_id == "pay_DESlfW9H8K9uqM"
    assert parsed.refund.notes == {"comment": "Customer requested"}
    assert parsed.payment is not None
    assert parsed.payment.refund_status == "full"


def test_refund_without_payment() -> None:
    body = refund_event()
    del body["payload"]["payment"]
    assert RazorpayRefundEvent.model_validate(body).payment is None


def test_the_seed_flat_shape_is_lifted_into_the_real_one() -> None:
    parsed = RazorpayPaymentEvent.model_validate(SEED_FLAT_PAYMENT)
    assert parsed.payment.id == "pay_456"
    assert parsed.payment.amount == 50000
    assert parsed.account_id == "acc_123"
    assert parsed.contains == ["payment"]
    assert RazorpayWebhook.model_validate(SEED_FLAT_PAYMENT).payload["payment"]["entity"]["id"] == (
        "pay_456"
    )


def test_missing_required_fields_fail() -> None:
    body = payment_event()
    del body["payload"]["payment"]["entity"]["amount"]
    with pytest.raises(ValidationError) as info:
        RazorpayPaymentEvent.model_validate(body)
    assert info.value.errors()[0]["loc"] == ("payload", "payment", "entity", "amount")


def test_seed_internal_events() -> None:
    user = UserCreated.model_validate(
        {
            "user_id": "u1",
            "email": "a@example.com",
            "name": "A",
            "created_at": "2024-01-20T10:30:00Z",
        }
    )
    assert user.created_at == datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
    paid = PaymentProcessed.model_validate(
        {
            "payment_id": "pay_1",
            "user_id": "u1",
            "amount": 500.5,
            "currency": "INR",
            "status": "success",
            "gateway": "razorpay",
            "processed_at": "2024-01-20T10:30:00Z",
            "extra": "kept",
        }
    )
    assert paid.amount == 500.5
    assert paid.model_dump()["extra"] == "kept"
