"""A notification microservice: consumes ``payment.processed`` from topic ``events`` with
the eventmill Router and a typed handler, and notifies the user.

    EVENTMILL_BUS_URL=sqlite:///eventmill-data/bus.db python examples/notification_service.py

It joins consumer group ``notifications``: every instance of this service shares the
events (each to one instance), and other groups (eventmill's own ``delivery`` and
``audit``, your other services) each get every event too. A handler that keeps failing
is retried with backoff, then its message is parked on ``notifications.poison``.
Ctrl-C (or SIGTERM) stops it gracefully: events in hand finish and are acked.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from eventmill import open_pubsub
from eventmill.events import Event, EventHandlers, EventRegistry, PaymentProcessed
from eventmill.router import (
    PoisonQueue,
    PoisonQueueConfig,
    Recoverer,
    Retry,
    RetryConfig,
    Router,
)

BUS_URL = os.environ.get("EVENTMILL_BUS_URL", "sqlite:///eventmill-data/bus.db?synchronous=normal")

handlers = EventHandlers(EventRegistry.default())
handled = 0
enough = asyncio.Event()
wanted = 0


@handlers.on("payment.processed")
async def notify(event: Event, payment: PaymentProcessed) -> None:
    """Typed: ``payment`` is the validated ``PaymentProcessed`` payload."""
    global handled
    # ... send the e-mail, the SMS or the push notification here ...
    print(
        f"notified {payment.user_id}: payment {payment.payment_id} of "
        f"{payment.amount:.2f} {payment.currency} {payment.status} (event {event.id})",
        flush=True,
    )
    handled += 1
    if wanted and handled >= wanted:
        enough.set()


async def main() -> None:
    global wanted
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: run on)")
    wanted = parser.parse_args().count
    async with await open_pubsub(BUS_URL) as bus:
        router = Router(subscriber=bus, publisher=bus)
        router.add_middleware(
            Recoverer(),
            PoisonQueue(bus, PoisonQueueConfig(topic="notifications.poison")),
            Retry(RetryConfig(max_retries=3, initial_interval=0.5)),
        )
        router.add_handler("notify", "events", handlers, group="notifications")
        task = asyncio.create_task(router.run(handle_signals=True))
        await router.running()
        print(f"ready: consuming topic events as group notifications on {bus_name()}", flush=True)
        if wanted:
            done = asyncio.create_task(enough.wait())
            await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            await router.close()
        await task


def bus_name() -> str:
    return BUS_URL.split("://", 1)[0] + "://"


if __name__ == "__main__":
    asyncio.run(main())
