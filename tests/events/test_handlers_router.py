"""EventHandlers as a real Router handler over the memory backend."""

from __future__ import annotations

import asyncio

from eventmill import MemoryPubSub
from eventmill.events import Event, EventHandlers, EventRegistry, RazorpayPaymentEvent
from eventmill.router import Router
from tests.payloads import payment_event


async def test_typed_handler_consumes_and_produces_through_the_router() -> None:
    bus = MemoryPubSub()
    await bus.start()
    handlers = EventHandlers(EventRegistry.default())
    seen: asyncio.Queue[int] = asyncio.Queue()

    @handlers.on("razorpay.payment.captured")
    async def on_captured(event: Event, payload: RazorpayPaymentEvent) -> Event:
        await seen.put(payload.payment.amount)
        return Event(
            event_name="payment.processed",
            user_id=event.user_id,
            payload={"payment_id": payload.payment.id},
        )

    router = Router(subscriber=bus, publisher=bus)
    router.add_handler("payments", "events", handlers, group="payments", publish_topic="out")
    out = await bus.subscribe("out", group="check")
    task = asyncio.create_task(router.run())
    try:
        await router.running()
        ignored = Event(event_name="user.created", user_id="u1", payload={})
        captured = Event(
            event_name="razorpay.payment.captured",
            source="razorpay",
            user_id="u1",
            payload=payment_event(),
        )
        await bus.publish("events", ignored.to_message(), captured.to_message())
        assert await asyncio.wait_for(seen.get(), 10) == 100
        produced = await asyncio.wait_for(out.__anext__(), 10)
        produced.ack()
        event = Event.from_message(produced)
        assert event.event_name == "payment.processed"
        assert event.user_id == "u1"
        assert event.payload == {"payment_id": "pay_DESlfW9H8K9uqM"}
        assert seen.empty()
    finally:
        await router.close()
        await task
        await out.close()
        await bus.close()
