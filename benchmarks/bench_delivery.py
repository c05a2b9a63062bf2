"""Outbound delivery throughput and latency, beside a bare httpx client.

    python benchmarks/bench_delivery.py [--events 2000] [--wide-events 100]

A receiver (uvicorn, its own process) answers 200 on 127.0.0.1. Two cases:

* 1 endpoint: ``--events`` events published on the bus → that many deliveries;
* 50 endpoints: ``--wide-events`` events → 50 deliveries each;
* then 1 endpoint again with events published at ``--paced-rate`` per second for 4 s
  (latency at a steady rate, rather than the time a burst takes to drain).

For each, eventmill (SQLite store and bus, in this process: fan-out, dispatcher,
recorder) is timed from the first publish until the receiver has every delivery, and a
bare ``httpx.AsyncClient`` posts the same bodies to the same receiver with the same
concurrency. Printed: deliveries/s of both, their ratio, and event→delivery latency
p50/p99 of every delivery (publish → its first arrival at the receiver; all events
are published at once, so this is mostly the time the burst takes to drain), this
process's CPU per delivery (eventmill: everything from the bus on — consuming, fan-out,
dispatcher, recorder, journal — but not making and publishing the events, nor the
benchmark's polling of the receiver; bare: the client), and store statements per
delivery. CPU per delivery is the figure to compare across runs on a shared machine.
eventmill runs on uvloop, the loop ``eventmill serve`` runs on; the bare client runs on
both asyncio's loop and uvloop and its faster run is the one printed (httpx is the
faster on asyncio's loop here). Target: ≥ 0.5x bare, ≥ 2,000/s.
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
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import uvloop
from sqlalchemy import event as sa_event

from _report import record

ENDPOINTS_WIDE = 50
LOOPS = ("asyncio", "uvloop")
T = TypeVar("T")


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
        state["arrivals"].setdefault(f"{event_id} {scope['path']}", time.time())
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
        # longer than any client's idle time here: with uvicorn's 5 s, the bare client's
        # pool of 500 connections at ~200/s reused one the receiver was closing (ReadError)
        timeout_keep_alive=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get(f"{url}/stats")).json()
    return data


async def _bare(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """Deliveries/s of a bare httpx client posting ``bodies`` with ``concurrency``, and
    this process's CPU seconds per delivery."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        queue = list(reversed(bodies))

        async def worker() -> None:
            while queue:
                body = queue.pop()
                response = await client.post(f"{url}/bare", content=body)
                response.raise_for_status()

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return len(bodies) / elapsed, cpu / len(bodies)


@dataclass
class Run:
    """One eventmill run: deliveries/s, latencies (s), CPU s and store statements per delivery."""

    rate: float
    latencies: list[float]
    cpu: float
    statements: float
    concurrency: int


async def _eventmill(
    url: str, events: int, endpoints: int, tmp: Path, rate: float | None = None
) -> Run:
    """Publish ``events`` (all at once, or ``rate`` per second in batches of 10) and time
    their deliveries."""
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
        store = resources.require_store()
        ds = DeliveryStore(store)
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        sa_event.listen(store.engine.sync_engine, "before_cursor_execute", count)
        for i in range(endpoints):
            await ds.create_endpoint(url=f"{url}/ep{i}", user_id="bench_user")
        await _stats(stats_client, url)  # reset
        before = (await _stats(stats_client, url))["count"]
        bus = resources.require_bus()
        published: dict[str, float] = {}
        statements = 0
        start, cpu = time.perf_counter(), time.process_time()
        size = 100 if rate is None else 10
        publishing = 0.0  # this process's CPU spent making and publishing the events
        for i in range(0, events, size):
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            t0 = time.process_time()
            batch = [
                Event(event_name="order.created", user_id="bench_user", payload={"n": i + j})
                for j in range(min(size, events - i))
            ]
            now = time.time()
            for e in batch:
                published[e.id] = now
            await bus.publish("events", *(e.to_message() for e in batch))
            publishing += time.process_time() - t0
        want = before + events * endpoints
        arrivals: dict[str, float] = {}
        polling = 0.0  # this process's CPU spent asking the receiver (not eventmill's)
        while True:
            t0 = time.process_time()
            stats = await _stats(stats_client, url)
            polling += time.process_time() - t0
            for key, at in stats["arrivals"].items():
                arrivals.setdefault(key, at)  # the first arrival of each delivery
            if stats["count"] >= want:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu - polling - publishing
        sa_event.remove(store.engine.sync_engine, "before_cursor_execute", count)
        latencies = sorted(at - published[key.split(" ")[0]] for key, at in arrivals.items())
        total = events * endpoints
        s = settings.delivery
        concurrency = min(s.concurrency_per_endpoint * endpoints, s.max_in_flight)
        return Run(total / elapsed, latencies, cpu / total, statements / total, concurrency)


def _run(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new event loop: ``"uvloop"`` (what ``eventmill serve`` runs on)
    or ``"asyncio"`` (the standard library's)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _bare_best(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, float, str]:
    """The bare client on each event loop; the faster run: (deliveries/s, CPU s per
    delivery, loop). httpx is faster on asyncio's loop than on uvloop here."""
    runs = [(*_run(loop, _bare(url, bodies, concurrency)), loop) for loop in LOOPS]
    return max(runs, key=lambda r: r[0])


async def _wait_for_receiver(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.TransportError):
                await client.get(f"{url}/stats")
                return
            await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--wide-events", type=int, default=100)
    parser.add_argument("--paced-rate", type=float, default=200.0)
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-receiver", str(port)],
    )
    try:
        _run("asyncio", _wait_for_receiver(url))
        body = orjson.dumps({"id": "evt_x", "event_name": "order.created", "payload": {"n": 1}})
        print(
            f"{'case':<14}{'eventmill/s':>12}{'bare/s':>8}{'ratio':>7}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'cpu us/dlv':>11}{'bare cpu':>9}{'stmts/dlv':>10}"
        )
        for name, events, endpoints in (
            ("1 endpoint", args.events, 1),
            (f"{ENDPOINTS_WIDE} endpoints", args.wide_events, ENDPOINTS_WIDE),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                run = _run("uvloop", _eventmill(url, events, endpoints, Path(tmp)))
            bare, bare_cpu, bare_loop = _bare_best(
                url, [body] * (events * endpoints), run.concurrency
            )
            lat = run.latencies
            p50 = statistics.median(lat) * 1000
            p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
            print(
                f"{name:<14}{run.rate:>12.0f}{bare:>8.0f}{run.rate / bare:>7.2f}{p50:>9.1f}"
                f"{p99:>9.1f}{run.cpu * 1e6:>11.0f}{bare_cpu * 1e6:>9.0f}{run.statements:>10.3f}"
            )
            record(
                "delivery",
                f"{events:,} events to {name} (SQLite store and bus; receiver: uvicorn)",
                run.rate,
                unit="deliveries/s",
                short=name,
                raw=bare,
                raw_label="bare httpx.AsyncClient posting the same bodies, same concurrency "
                f"(on {bare_loop}, the faster loop for it)",
                ratio_raw=run.rate / bare,
                peer_note="-",
                note=f"event->delivery p50 {p50:.0f} ms, p99 {p99:.0f} ms (a burst draining); "
                f"CPU/delivery {run.cpu * 1e6:.0f} us vs bare {bare_cpu * 1e6:.0f} us; "
                "target >= 0.5x bare and >= 2,000/s",
            )
        # latency when the events come at a steady rate the service keeps up with
        paced = int(args.paced_rate * 4)
        with tempfile.TemporaryDirectory() as tmp:
            run = _run("uvloop", _eventmill(url, paced, 1, Path(tmp), rate=args.paced_rate))
        lat = run.latencies
        p50 = statistics.median(lat) * 1000
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)] * 1000
        name = f"1 ep {args.paced_rate:g}/s"
        print(
            f"{name:<14}{run.rate:>12.0f}{'-':>8}{'-':>7}{p50:>9.1f}{p99:>9.1f}"
            f"{run.cpu * 1e6:>11.0f}{'-':>9}{run.statements:>10.3f}"
        )
        record(
            "delivery",
            f"1 endpoint, events at a steady {args.paced_rate:g}/s for 4 s",
            run.rate,
            unit="deliveries/s",
            short=name,
            peer_note="-",
            note=f"event->delivery p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # uvicorn still draining connections
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-receiver":
        _serve_receiver(int(sys.argv[2]))
    else:
        main()
