"""A dispatcher process for the multi-process test: sends due deliveries from the
store at argv[1] until none is pending, then exits."""

from __future__ import annotations

import asyncio
import sys

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from eventmill import open_pubsub
from eventmill.delivery.builders import PayloadBuilders
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.dispatcher import Dispatcher
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.store import DeliveryStore
from eventmill.store import open_store


async def main(store_url: str) -> None:
    store = await open_store(store_url)
    bus = await open_pubsub("memory://")
    settings = DeliverySettings(
        allow_networks=["127.0.0.0/8"],
        claim_batch=20,
        poll_interval_seconds=0.05,
        timeout_seconds=5,
        lease_seconds=30,
    )
    dispatcher = Dispatcher(
        DeliveryStore(store),
        settings,
        PayloadBuilders(),
        DeliveryMetrics(CollectorRegistry()),
        lambda: bus,
    )
    await dispatcher.start()
    print("ready", flush=True)
    try:
        async with asyncio.timeout(120):
            while True:
                await asyncio.sleep(0.2)
                async with store.transaction(write=False) as conn:
                    pending = (
                        await conn.execute(
                            sa.text("SELECT count(*) FROM deliveries WHERE status = 'pending'")
                        )
                    ).scalar_one()
                if pending == 0:
                    break
    finally:
        await dispatcher.close()
        await bus.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
