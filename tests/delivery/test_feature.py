"""The delivery feature in ``eventmill serve``: stopping is bounded by
``shutdown_grace_seconds``."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from eventmill.store import open_store
from tests.delivery.threaded import CountingReceiver
from tests.ingest.support import Server

pytestmark = pytest.mark.slow


def test_sigterm_cuts_an_attempt_in_flight_at_the_shutdown_grace(tmp_path: Path) -> None:
    """A receiver that holds the request for an hour: the attempt waited for its own
    timeout (15 s) on SIGTERM, whatever ``shutdown_grace_seconds`` said (2 s here). It
    is cut at the grace; its delivery is sent again once its lease expires."""
    import asyncio

    store_url = f"sqlite:///{tmp_path / 'events.db'}"

    async def key() -> str:
        store = await open_store(store_url)
        try:
            return (await store.api_keys.create("t", ["admin", "publish"]))[1]
        finally:
            await store.close()

    plaintext = asyncio.run(key())
    auth = {"Authorization": f"Bearer {plaintext}"}
    with CountingReceiver() as rec:
        server = Server.embedded(
            tmp_path,
            EVENTMILL_STORE_URL=store_url,
            EVENTMILL_SHUTDOWN_GRACE_SECONDS="2",
            EVENTMILL_DELIVERY__TIMEOUT_SECONDS="60",
            EVENTMILL_DELIVERY__LEASE_SECONDS="90",
            EVENTMILL_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]',
        )
        server.start()
        try:
            endpoint = httpx.post(
                f"{server.url}/v1/endpoints",
                json={"url": rec.url("/hang"), "user_id": "u1"},
                headers=auth,
            )
            assert endpoint.status_code == 201, endpoint.text
            published = httpx.post(
                f"{server.url}/v1/events",
                json={"event_name": "a.b", "user_id": "u1"},
                headers=auth,
            )
            assert published.status_code == 200, published.text
            deadline = time.monotonic() + 30
            while not rec.started("/hang"):  # the attempt is in flight
                assert time.monotonic() < deadline, server.log_text()
                time.sleep(0.05)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            # the grace (2 s) and the rest of shutting down; the attempt's own timeout
            # would be 60 s
            assert server.wait(timeout=20) == 0, server.log_text()
        finally:
            server.stop()
