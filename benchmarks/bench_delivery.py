"""Outbound delivery throughput and latency, beside a bare httpx client.

    python benchmarks/bench_delivery.py [--events 2000] [--wide-events 100]

A receiver (uvicorn, its own process) answers 200 on 127.0.0.1. Two cases:

* 1 endpoint: ``--events`` events published on the bus → that many deliveries;
* 50 endpoints: ``--wide-events`` events → 50 deliveries each.

For each, eventmill (SQLite store and bus, in this process: fan-out, dispatcher,
recorder) is timed from the first publish until the receiver has every delivery, and a
bare ``httpx.AsyncClient`` posts the same bodies to the same receiver with the same
concurrency. Printed: deliveries/s of both, their ratio, and event→delivery latency
p50/p99 (publish → arrival at the receiver). Target: ≥ 0.5x bare, ≥ 2,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ENDPOINTS_WIDE = 50


async def _receiver_app(scope: Any, receive: Any, send: Any) -> None:
    state: dict[str, Any] = _STATE
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stats":
        out = orjson.dumps({"count": state["count"], "arrivals": state["arrivals"]})
        state["arrivals"] = {}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": out})
        return
    state["count"] += 1
    if scope["path"].startswith("/ep"):
        event_id = orjson.loads(body).get("id")
        state["arrivals"].setdefault(event_id, time.time())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


_STATE: dict[str, Any] = {"count": 0, "arrivals": {}}


def _serve_receiver(port: int) -> None:
    import uvicorn

    uvicorn.run(
        _receiver_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        interface="asgi3",
        lifespan="off",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get(f"{url}/stats")).json()
    return data


async def _bare(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Deliveries/s of a bare httpx client posting ``bodies`` with ``concurrency``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        queue = list(reversed(bodies))

        async def worker() -> None:
            while queue:
                body = queue.pop()
                response = await client.post(f"{url}/bare", content=body)
                response.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - start)


async def _eventmill(url: str, events: int, endpoints: int, tmp: Path) -> tuple[float, list[float]]:
    from eventmill.app import create_app, resources_of
    from eventmill.delivery.store import DeliveryStore
    from eventmill.events import Event
    from eventmill.settings import Settings

    settings = Settings(
        data_dir=tmp,
        relay_interval_seconds=3600.0,
        audit_enabled=False,
        delivery={"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.2},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient() as stats_client:
        resources = resources_of(app)
        ds = DeliveryStore(resources.require_store())
        for i in range(endpoints):
            await ds.create_endpoint(url=f"{url}/ep{i}", user_id="bench_user")
        await _stats(stats_client, url)  # reset
        before = (await _stats(stats_client, url))["count"]
        bus = resources.require_bus()
        published: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(0, events, 100):
            batch = [
                Event(event_name="order.created", user_id="bench_user", payload={"n": i + j})
                for j in range(min(100, events - i))
            ]
            now = time.time()
            for e in batch:
                published[e.id] = now
            await bus.publish("events", *(e.to_message() for e in batch))
        want = before + events * endpoints
        arrivals: dict[str, float] = {}
        while True:
            stats = await _stats(stats_client, url)
            arrivals.update(stats["arrivals"])
            if stats["count"] >= want:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        latencies = sorted(arrivals[e] - published[e] for e in published if e in arrivals)
        return events * endpoints / elapsed, latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--wide-events", type=int, default=100)
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-receiver", str(port)],
    )
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    await client.get(f"{url}/stats")
                    break
                await asyncio.sleep(0.05)
        body = orjson.dumps({"id": "evt_x", "event_name": "order.created", "payload": {"n": 1}})
        print(
            f"{'case':<14}{'eventmill/s':>12}{'bare/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
        )
        for name, events, endpoints in (
            ("1 endpoint", args.events, 1),
            (f"{ENDPOINTS_WIDE} endpoints", args.wide_events, ENDPOINTS_WIDE),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                rate, lat = await _eventmill(url, events, endpoints, Path(tmp))
            concurrency = min(10 * endpoints, 1000)
            bare = await _bare(url, [body] * (events * endpoints), concurrency)
            p50 = statistics.median(lat) * 1000
            p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
            print(f"{name:<14}{rate:>12.0f}{bare:>10.0f}{rate / bare:>8.2f}{p50:>9.1f}{p99:>9.1f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-receiver":
        _serve_receiver(int(sys.argv[2]))
    else:
        asyncio.run(main())
