"""Razorpay webhook bodies shared by the ingest and store benchmarks."""

from __future__ import annotations

from typing import Any


def razorpay_payment_captured(i: int, *, users: int = 1000) -> dict[str, Any]:
    """A distinct, real-shaped ``payment.captured`` webhook body (payment ``i``).

    The user id in the payment's notes cycles through ``users`` values.
    """
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": "payment.captured",
        "contains": ["payment"],
        "payload": {
            "payment": {
                "entity": {
                    "id": f"pay_{i:014d}",
                    "entity": "payment",
                    "amount": 50000,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": "order_9A33XWu170gUtm",
                    "method": "card",
                    "captured": True,
                    "email": "gaurav.kumar@example.com",
                    "contact": "+919876543210",
                    "notes": {"user_id": f"user_{i % users}"},
                    "fee": 1180,
                    "tax": 180,
                    "created_at": 1567674599,
                }
            }
        },
        "created_at": 1567674606,
    }
