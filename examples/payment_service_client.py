"""The same payment microservice, publishing ``payment.processed`` over HTTP with
:class:`eventmill.Client`: for services that reach eventmill's API rather than its broker.

    eventmill keys create payments --scope publish        # prints the key once
    EVENTMILL_API_KEY=em_… python examples/payment_service_client.py

The service validates the event against the registered model of ``payment.processed``,
stores it, then publishes it to topic ``events``. The ``Idempotency-Key`` is the payment
id, so a retried request, or a re-run after a crash, stores the event once.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from datetime import UTC, datetime

import eventmill
from eventmill.events import PaymentProcessed

URL = os.environ.get("EVENTMILL_URL", "http://127.0.0.1:8080")


def process_payment(client: eventmill.Client, *, user_id: str, amount: float, currency: str) -> str:
    """Process a payment, then publish ``payment.processed``; return the event's id."""
    payment_id = f"pay_{uuid.uuid4().hex[:14]}"
    # ... charge the customer here ...
    payment = PaymentProcessed(
        payment_id=payment_id,
        user_id=user_id,
        amount=amount,
        currency=currency,
        status="captured",
        gateway="razorpay",
        processed_at=datetime.now(UTC),
    )
    result = client.publish(
        "payment.processed",
        payment.model_dump(mode="json"),
        user_id=user_id,
        idempotency_key=payment_id,  # retries (the client's own too) store it once
    )
    return result.ids[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user-id", default="user_123")
    parser.add_argument("--amount", type=float, default=500.0)
    parser.add_argument("--currency", default="INR")
    args = parser.parse_args()
    api_key = os.environ.get("EVENTMILL_API_KEY")
    if not api_key:
        print("set EVENTMILL_API_KEY (eventmill keys create NAME --scope publish)", file=sys.stderr)
        return 2
    with eventmill.Client(URL, api_key) as client:
        try:
            event_id = process_payment(
                client, user_id=args.user_id, amount=args.amount, currency=args.currency
            )
        except eventmill.ClientError as exc:  # status, code, message, details of the answer
            print(f"not published: {exc}", file=sys.stderr)
            return 1
    print(f"published payment.processed {event_id} for {args.user_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
