"""Real-shaped provider payloads (as Razorpay, GitHub, Stripe send them) and their signers.

Shared by the event model and transformer tests (``tests/events``) and the service tests
(``tests/ingest``). The Razorpay bodies follow Razorpay's webhook documentation samples:
one payment entity (:func:`payment_entity`), and one body per event type built on it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

# -- Razorpay ---------------------------------------------------------------------------


def payment_entity(**overrides: Any) -> dict[str, Any]:
    """A payment entity; ``overrides`` replace its fields (``notes`` is Razorpay's ``[]``)."""
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
    """A ``payment.*`` webhook body; ``entity`` overrides the payment entity's fields."""
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": ["payment"],
        "payload": {"payment": {"entity": payment_entity(**entity)}},
        "created_at": 1567674606,
    }


def payment_captured(
    *, payment_id: str = "pay_DESlfW9H8K9uqM", user_id: str = "user_123"
) -> dict[str, Any]:
    """A ``payment.captured`` body carrying the merchant's ``user_id`` in the notes."""
    return payment_event("payment.captured", id=payment_id, notes={"user_id": user_id})


def order_paid(*, user_id: str | None = None) -> dict[str, Any]:
    """An ``order.paid`` body; ``user_id``, if given, is in the order's notes."""
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
                    "notes": {"user_id": user_id} if user_id is not None else [],
                    "created_at": 1567674581,
                }
            },
        },
        "created_at": 1567674606,
    }


def refund_event(event: str = "refund.processed") -> dict[str, Any]:
    """A ``refund.*`` body (no user id in it: the account id stands in)."""
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


RAZORPAY_SAMPLES: dict[str, Callable[..., dict[str, Any]]] = {
    "payment.captured": payment_captured,  # user_id "user_123", in the payment's notes
    "order.paid": functools.partial(order_paid, user_id="user_456"),  # in the order's notes
    "refund.processed": refund_event,  # none: user_id falls back to the account id
}
"""One webhook body per event type the service tests send, by Razorpay event name."""

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


def dumps(payload: dict[str, Any]) -> bytes:
    """Serialise like Razorpay (compact, non-ASCII kept)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def razorpay_headers(body: bytes, secret: str, event_id: str) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Razorpay-Signature": sig,
        "X-Razorpay-Event-Id": event_id,
    }


# -- GitHub, Stripe, plain HMAC ---------------------------------------------------------


def github_push(delivery_sha: str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246") -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": delivery_sha,
        "repository": {"id": 35129377, "full_name": "octo-org/octo-repo", "private": False},
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 583231},
    }


def github_headers(body: bytes, secret: str, delivery: str, event: str = "push") -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={sig}",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
    }


def stripe_event(event_id: str = "evt_1NG8Du2eZvKYlo2CUI79vXWy") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2022-11-15",
        "created": 1686089970,
        "data": {
            "object": {
                "id": "pi_3NG8Dt2eZvKYlo2C0mbPJk0l",
                "object": "payment_intent",
                "amount": 2000,
                "currency": "usd",
                "metadata": {"user_id": "user_789"},
                "status": "succeeded",
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "type": "payment_intent.succeeded",
    }


def stripe_headers(body: bytes, secret: str, *, timestamp: int | None = None) -> dict[str, str]:
    t = int(time.time()) if timestamp is None else timestamp
    sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "Stripe-Signature": f"t={t},v1={sig}"}


def hmac_headers(
    body: bytes,
    secret: str,
    *,
    header: str = "X-Signature",
    algorithm: str = "sha256",
    encoding: str = "hex",
    prefix: str = "",
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, algorithm).digest()
    value = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    return {"Content-Type": "application/json", header: prefix + value}
