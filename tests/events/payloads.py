"""Real-shaped Razorpay webhook bodies (from Razorpay's webhook documentation samples)."""

from __future__ import annotations

from typing import Any


def payment_entity(**overrides: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": "pay_DESlfW9H8K9uqM",
        "entity": "payment",
        "amount": 100,
        "currency": "INR",
        "base_amount": 100,
        "status": "captured",
        "order_id": "order_DESlLckIVRkHWj",
        "invoice_id": None,
        "international": False,
        "method": "netbanking",
        "amount_refunded": 0,
        "amount_transferred": 0,
        "refund_status": None,
        "captured": True,
        "description": None,
        "card_id": None,
        "bank": "HDFC",
        "wallet": None,
        "vpa": None,
        "email": "gaurav.kumar@example.com",
        "contact": "+919876543210",
        "notes": [],
        "fee": 2,
        "tax": 0,
        "error_code": None,
        "error_description": None,
        "error_source": None,
        "error_step": None,
        "error_reason": None,
        "acquirer_data": {"bank_transaction_id": "0125836177"},
        "created_at": 1567674599,
    }
    entity.update(overrides)
    return entity


def payment_event(event: str = "payment.captured", **entity: Any) -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": ["payment"],
        "payload": {"payment": {"entity": payment_entity(**entity)}},
        "created_at": 1567674606,
    }


def order_paid(order_notes: Any = None) -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": "order.paid",
        "contains": ["payment", "order"],
        "payload": {
            "payment": {"entity": payment_entity()},
            "order": {
                "entity": {
                    "id": "order_DESlLckIVRkHWj",
                    "entity": "order",
                    "amount": 100,
                    "amount_paid": 100,
                    "amount_due": 0,
                    "currency": "INR",
                    "receipt": "rcptid #1",
                    "offer_id": None,
                    "status": "paid",
                    "attempts": 1,
                    "notes": order_notes if order_notes is not None else [],
                    "created_at": 1567674581,
                }
            },
        },
        "created_at": 1567674606,
    }


def refund_event(event: str = "refund.processed") -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": ["refund", "payment"],
        "payload": {
            "refund": {
                "entity": {
                    "id": "rfnd_FgRAHdNOM4ZVbO",
                    "entity": "refund",
                    "amount": 100,
                    "currency": "INR",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "notes": {"comment": "Customer requested"},
                    "receipt": None,
                    "acquirer_data": {"arn": "10000000000000"},
                    "created_at": 1600856650,
                    "batch_id": None,
                    "status": "processed",
                    "speed_processed": "normal",
                    "speed_requested": "normal",
                }
            },
            "payment": {"entity": payment_entity(amount_refunded=100, refund_status="full")},
        },
        "created_at": 1600856650,
    }


SEED_FLAT_PAYMENT = {
    "event": "payment.captured",
    "entity": "event",
    "account": {"id": "acc_123"},
    "payment": {
        "id": "pay_456",
        "amount": 50000,
        "currency": "INR",
        "status": "captured",
        "order_id": "order_789",
    },
}
"""The webhook body from eventmill's original description (a flat, simplified shape)."""
