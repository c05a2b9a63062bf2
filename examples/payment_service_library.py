"""A payment microservice that publishes ``payment.processed`` straight to the bus with the
eventmill library (the system description's third example, in Python).

It publishes to topic ``events`` on the bus ``eventmill serve`` uses, so every consumer of
that topic sees it, and the service's audit handler stores it (``GET /v1/events`` shows it).

    EVENTMILL_BUS_URL=sqlite:///eventmill-data/bus.db python examples/payment_service_library.py

``EVENTMILL_BUS_URL`` defaults to the bus ``eventmill serve`` runs on when started from the
same directory without configuration; use the service's own URL (``kafka://…``,
``redis://…``) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from datetime import UTC, datetime

from eventmill import Publisher, open_pubsub
from eventmill.events import Event, EventMetadata, PaymentProcessed

BUS_URL = os.environ.get("EVENTMILL_BUS_URL", "sqlite:///eventmill-data/bus.db?synchronous=normal")


async def process_payment(
    bus: Publisher, *, user_id: str, amount: float, currency: str, correlation_id: str
) -> Event:
    """Process a payment, then tell the other services: publish ``payment.processed``."""
    payment_id = f"pay_{uuid.uuid4().hex[:14]}"
    # ... charge the customer here; a failure raises before anything is published ...
    event = Event(
        event_name="payment.processed",
        source="internal",
        user_id=user_id,
        payload=PaymentProcessed(
            payment_id=payment_id,
            user_id=user_id,
            amount=amount,
            currency=currency,
            status="captured",
            gateway="razorpay",
            processed_at=datetime.now(UTC),
        ),
        metadata=EventMetadata(correlation_id=correlation_id),
    )
    # Returns once the bus has accepted the event (durably, where the bus is durable).
    # To commit the event with your own database writes (on postgresql:// or sqlite:///),
    # pass your open transaction: bus.publish(..., transaction=conn), see
    # docs/library/transactions.md.
    await bus.publish("events", event.to_message())
    return event


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--user-id", default="user_123")
    parser.add_argument("--amount", type=float, default=500.0)
    parser.add_argument("--currency", default="INR")
    args = parser.parse_args()
    async with await open_pubsub(BUS_URL) as bus:
        event = await process_payment(
            bus,
            user_id=args.user_id,
            amount=args.amount,
            currency=args.currency,
            correlation_id=f"corr_{uuid.uuid4().hex[:12]}",
        )
    print(f"published {event.event_name} {event.id} for {event.user_id}")


if __name__ == "__main__":
    asyncio.run(main())
