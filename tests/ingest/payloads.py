"""Real-shaped provider payloads (as Razorpay, GitHub, Stripe send them) and signers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


def payment_captured(
    *, payment_id: str = "pay_29QQoUBi66xm2f", user_id: str = "user_123"
) -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": "payment.captured",
        "contains": ["payment"],
        "payload": {
            "payment": {
                "entity": {
                    "id": payment_id,
                    "entity": "payment",
                    "amount": 50000,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": "order_9A33XWu170gUtm",
                    "invoice_id": None,
                    "international": False,
                    "method": "card",
                    "amount_refunded": 0,
                    "refund_status": None,
                    "captured": True,
                    "description": "Purchase Description",
                    "card_id": "card_29QQoUdWsbhoaU",
                    "bank": None,
                    "wallet": None,
                    "vpa": None,
                    "email": "gaurav.kumar@example.com",
                    "contact": "+919876543210",
                    "notes": {"user_id": user_id},
                    "fee": 1180,
                    "tax": 180,
                    "error_code": None,
                    "error_description": None,
                    "created_at": 1567674599,
                }
            }
        },
        "created_at": 1567674606,
    }


def order_paid(
    *, order_id: str = "order_DaaS6LOUAASb7Y", user_id: str = "user_456"
) -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": "order.paid",
        "contains": ["payment", "order"],
        "payload": {
            "payment": {
                "entity": {
                    "id": "pay_DaaSOvhgcOfzgR",
                    "entity": "payment",
                    "amount": 2200,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": order_id,
                    "method": "card",
                    "captured": True,
                    "email": "gaurav.kumar@example.com",
                    "contact": "+919876543210",
                    "notes": [],
                    "fee": 44,
                    "tax": 0,
                    "created_at": 1570545328,
                }
            },
            "order": {
                "entity": {
                    "id": order_id,
                    "entity": "order",
                    "amount": 2200,
                    "amount_paid": 2200,
                    "amount_due": 0,
                    "currency": "INR",
                    "receipt": "rcptid #1",
                    "offer_id": None,
                    "status": "paid",
                    "attempts": 1,
                    "notes": {"user_id": user_id},
                    "created_at": 1570545318,
                }
            },
        },
        "created_at": 1570545329,
    }


def refund_processed(*, refund_id: str = "rfnd_FgRAHdNOM4ZVbO") -> dict[str, Any]:
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": "refund.processed",
        "contains": ["refund", "payment"],
        "payload": {
            "refund": {
                "entity": {
                    "id": refund_id,
                    "entity": "refund",
                    "amount": 50000,
                    "currency": "INR",
                    "payment_id": "pay_FgR9UMzgmKDJRi",
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
            "payment": {
                "entity": {
                    "id": "pay_FgR9UMzgmKDJRi",
                    "entity": "payment",
                    "amount": 50000,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": None,
                    "method": "upi",
                    "amount_refunded": 50000,
                    "refund_status": "full",
                    "captured": True,
                    "vpa": "gaurav.kumar@upi",
                    "email": "gaurav.kumar@example.com",
                    "contact": "+919876543210",
                    "notes": [],
                    "fee": 1180,
                    "tax": 180,
                    "created_at": 1600856366,
                }
            },
        },
        "created_at": 1600856650,
    }


RAZORPAY_SAMPLES = {
    "payment.captured": payment_captured,
    "order.paid": order_paid,
    "refund.processed": refund_processed,
}


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


def github_headers(body: bytes, secret: str, delivery: str, event: str = "push") -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={sig}",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": event,
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


def github_push(delivery_sha: str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246") -> dict[str, Any]:
    return {
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": delivery_sha,
        "repository": {"id": 35129377, "full_name": "octo-org/octo-repo", "private": False},
        "pusher": {"name": "octocat", "email": "octocat@github.com"},
        "sender": {"login": "octocat", "id": 583231},
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
