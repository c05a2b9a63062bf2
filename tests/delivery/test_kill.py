"""``eventmill serve`` SIGKILLed three times while 1,000 signed Razorpay webhooks are
ingested and delivered to 10 endpoints: afterwards every webhook answered 2xx reached
every endpoint at least once, and the store holds one delivery per (event, endpoint)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from eventmill.delivery.store import DeliveryStore
from eventmill.store import open_store
from tests import payloads
from tests.delivery.threaded import CountingReceiver
from tests.ingest.support import RAZORPAY_SECRET, Server

pytestmark = pytest.mark.slow

WEBHOOKS = 1000
ENDPOINTS = 10
KILL_AT = (250, 500, 750)


def _env(tmp_path: Path, store_url: str) -> dict[str, str]:
    return {
        "EVENTMILL_DATA_DIR": str(tmp_path / "data"),
        "EVENTMILL_BUS_URL": f"sqlite:///{tmp_path / 'bus.db'}",
        "EVENTMILL_STORE_URL": store_url,
        "RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
        "EVENTMILL_LOG_LEVEL": "warning",
        "EVENTMILL_FAULT": "",
        "EVENTMILL_DELIVERY__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "EVENTMILL_DELIVERY__TIMEOUT_SECONDS": "3",
        "EVENTMILL_DELIVERY__LEASE_SECONDS": "8",
        "EVENTMILL_DELIVERY__POLL_INTERVAL_SECONDS": "0.2",
        "EVENTMILL_DELIVERY__RETRY_SCHEDULE": "[0, 0.5, 1, 2, 2, 2, 2, 2]",
    }


async def _create_endpoints(store_url: str, rec: CountingReceiver) -> list[str]:
    store = await open_store(store_url)
    try:
        ds = DeliveryStore(store)
        ids = []
        for i in range(ENDPOINTS):
            user = "user_123" if i % 2 else None  # half per user, half for every user
            ep = await ds.create_endpoint(
                url=rec.url(f"/ep{i}"), user_id=user, event_types=["razorpay.payment.*"]
            )
            ids.append(ep.id)
        return ids
    finally:
        await store.close()


async def _deliveries(store_url: str) -> list[tuple[str, str, str, str]]:
    store = await open_store(store_url)
    try:
        async with store.transaction(write=False) as conn:
            rows = await conn.execute(
                sa.text("SELECT id, event_id, endpoint_id, status FROM deliveries")
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        await store.close()


def _send(client: httpx.Client, server: Server, i: int) -> str | None:
    body = payloads.dumps(payloads.payment_captured(payment_id=f"pay_kill{i:05d}"))
    headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, f"evt_kill_{i:05d}")
    try:
        response = client.post(f"{server.url}/webhooks/razorpay", content=body, headers=headers)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    event_id: str = response.json()["id"]
    return event_id


def test_deliveries_survive_three_sigkills(tmp_path: Path, store_url: str) -> None:
    with CountingReceiver() as rec:
        endpoint_ids = asyncio.run(_create_endpoints(store_url, rec))
        server = Server(_env(tmp_path, store_url), tmp_path / "server.log")
        server.start()
        answered: dict[int, str] = {}
        kills = 0
        try:
            with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
                todo = list(range(WEBHOOKS))
                while todo:
                    # send up to the next kill point, then SIGKILL mid-flight
                    stop = next((k for k in KILL_AT[kills:] if k > len(answered)), WEBHOOKS)
                    batch, todo = todo[: stop - len(answered)], todo[stop - len(answered) :]
                    futures = {i: pool.submit(_send, client, server, i) for i in batch}
                    if kills < len(KILL_AT) and stop == KILL_AT[kills]:
                        # kill while the last sends are in flight and deliveries run
                        while sum(f.done() for f in futures.values()) < len(batch) * 0.9:
                            time.sleep(0.005)
                        assert server.proc is not None
                        server.proc.send_signal(signal.SIGKILL)
                        server.wait()
                        kills += 1
                        server = Server(_env(tmp_path, store_url), tmp_path / "server.log")
                        server.start()
                    for i, future in futures.items():
                        event_id = future.result()
                        if event_id is None:
                            todo.append(i)  # the provider retries what got no 2xx
                        else:
                            answered[i] = event_id
            assert kills == 3
            expected = set(answered.values())
            assert len(expected) == WEBHOOKS
            deadline = time.monotonic() + 120  # a hang guard, not a timed assertion
            while time.monotonic() < deadline:
                with rec.lock:
                    done = all(expected <= rec.events[f"/ep{i}"] for i in range(ENDPOINTS))
                if done:
                    break
                time.sleep(0.2)
            with rec.lock:
                missing = {
                    f"/ep{i}": len(expected - rec.events[f"/ep{i}"]) for i in range(ENDPOINTS)
                }
            assert all(n == 0 for n in missing.values()), (missing, server.log_text())
        finally:
            server.stop()

        rows = asyncio.run(_deliveries(store_url))
        pairs = [(event_id, endpoint_id) for _, event_id, endpoint_id, _ in rows]
        assert len(pairs) == len(set(pairs)), "two deliveries for one (event, endpoint)"
        assert {p for p in pairs if p[0] in expected} == {
            (e, ep) for e in expected for ep in endpoint_ids
        }
        by_endpoint = dict(zip(endpoint_ids, range(ENDPOINTS), strict=True))
        with rec.lock:
            for delivery_id, event_id, endpoint_id, _ in rows:
                if event_id in expected:
                    assert delivery_id in rec.ids[f"/ep{by_endpoint[endpoint_id]}"]
        assert uuid
