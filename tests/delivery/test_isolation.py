"""A hanging endpoint beside a healthy one: the healthy one's deliveries are not held
up behind the hanging one's (per-endpoint lanes; full lanes are skipped by claims)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.delivery.support import delivery_settings, receiver, service

pytestmark = pytest.mark.slow

EVENTS = 200
RATE = 50  # events per second, for 4 s
P99_BOUND = 1.0
"""Seconds. The hanging endpoint holds each attempt for the 2 s timeout; a healthy
delivery queued behind it would wait at least that long."""


async def test_a_hanging_endpoint_does_not_delay_a_healthy_one(tmp_path: Path) -> None:
    async def script(request: Request, n: int) -> Response:
        if request.url.path == "/hang":
            await asyncio.sleep(60)
        return Response(b"ok")

    settings = delivery_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'events.db'}",
        timeout_seconds=2,
        lease_seconds=10,
        concurrency_per_endpoint=5,
        retry_schedule=[0, 1, 1, 1],
    )
    async with receiver(script) as rec, service(settings) as svc:
        await svc.create_endpoint(url=rec.url("/hang"), user_id="u1")
        await svc.create_endpoint(url=rec.url("/ok"), user_id="u1")
        published: dict[str, float] = {}
        start = time.monotonic()
        for i in range(EVENTS):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            sent_at = time.monotonic()
            [event_id] = await svc.publish({"event_name": "x.y", "user_id": "u1"})
            published[event_id] = sent_at
        await rec.wait_for(lambda: len(rec.at("/ok")) >= EVENTS, timeout=60, what="healthy")
        latencies = sorted(r.at - published[orjson.loads(r.body)["id"]] for r in rec.at("/ok"))
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        assert len(rec.at("/hang")) >= 5  # the hanging one was tried, and hung
        assert p99 < P99_BOUND, f"healthy endpoint p50 {p50:.3f} s, p99 {p99:.3f} s"
