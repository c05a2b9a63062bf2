"""Harness shared by the server-backend benchmarks (bench_redis, bench_nats, bench_kafka,
bench_postgres).

Each benchmark measures the same two things against its raw client:

* publish - :data:`PUBLISHERS` concurrent tasks, each awaiting one-message
  ``publish`` calls one after another (:func:`publish_concurrently`);
* end-to-end - the same publishers while a Router (consumer group, no-op handler,
  ack) consumes, until the last message was handled (:func:`router_end_to_end`).

and prints one line per figure with the ratio eventmill / raw (:func:`report`).
Imported as ``from _common import ...``: the scripts run as
``python benchmarks/bench_x.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _report import record
from eventmill.message import Message
from eventmill.pubsub.base import PubSub

try:
    from eventmill.router import Router, RouterConfig
except ImportError:  # pragma: no cover - the router is a sibling package
    Router = None  # type: ignore[assignment,misc]

#: Concurrent publishing tasks in every publish / end-to-end run.
PUBLISHERS = 100

#: Builds the ``i``-th message of publisher ``p``.
MessageFactory = Callable[[int, int], Message]


def plain_messages(payload: bytes) -> MessageFactory:
    """Every message carries ``payload`` and no metadata."""
    return lambda p, i: Message(payload)


def parser(doc: str | None, *, concurrency: int = 8) -> argparse.ArgumentParser:
    """An argument parser with ``--messages``, ``--payload`` and ``--concurrency``."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--payload", type=int, default=100, help="payload bytes")
    ap.add_argument(
        "--concurrency", type=int, default=concurrency, help="router handler concurrency"
    )
    return ap


async def timed(*aws: Awaitable[object]) -> float:
    """Seconds until every awaitable in ``aws`` (run concurrently) finished."""
    t0 = time.perf_counter()
    await asyncio.gather(*aws)
    return time.perf_counter() - t0


async def publish_concurrently(
    bus: PubSub, topic: str, per: int, message: MessageFactory, publishers: int = PUBLISHERS
) -> float:
    """Seconds for ``publishers`` tasks to each publish ``per`` messages, one at a time."""

    async def publisher(p: int) -> None:
        for i in range(per):
            await bus.publish(topic, message(p, i))

    return await timed(*(publisher(p) for p in range(publishers)))


async def router_end_to_end(
    bus: PubSub, topic: str, group: str, total: int, message: MessageFactory, concurrency: int
) -> float:
    """msgs/s of publishing ``total`` messages (rounded down to a multiple of
    :data:`PUBLISHERS`) while a Router consumes them from ``group``, no-op handler.

    Without the router package, one task drains the subscription directly (said so
    on stdout). The clock stops when the last message was handled; the router is
    closed afterwards (the caller closes ``bus``).
    """
    per = total // PUBLISHERS
    want = per * PUBLISHERS
    handled = 0
    done = asyncio.Event()

    if Router is not None:

        async def handler(msg: Message) -> None:
            nonlocal handled
            handled += 1
            if handled >= want:
                done.set()

        router = Router(subscriber=bus, publisher=bus, config=RouterConfig())
        router.add_handler("bench", topic, handler, group=group, concurrency=concurrency)
        runner = asyncio.create_task(router.run())
        await router.running()
    else:
        print("    (eventmill.router not importable: consuming with the subscription directly)")
        sub = await bus.subscribe(topic, group=group)

        async def consume() -> None:
            nonlocal handled
            async for msg in sub:
                handled += 1
                msg.ack()
                if handled >= want:
                    done.set()

        runner = asyncio.create_task(consume())
    elapsed = await timed(
        publish_concurrently(bus, topic, per, message), asyncio.wait_for(done.wait(), 300)
    )
    if Router is not None:
        await router.close()
        await runner
    else:
        runner.cancel()
    return want / elapsed


def via() -> str:
    """How the end-to-end figure consumed: ``router`` or ``subscription``."""
    return "router" if Router is not None else "subscription"


def report(label: str, ours: float, raw: float, note: str = "") -> None:
    """Print one figure: eventmill and raw msgs/s and their ratio (and keep it for the
    JSON line ``benchmarks/run`` reads)."""
    print(
        f"  {label:<11} eventmill {ours:>9,.0f} msgs/s   raw {raw:>9,.0f} msgs/s   "
        f"{ours / raw:.2f}x{note}"
    )
    script = Path(sys.argv[0]).name
    record(
        f"{script.removeprefix('bench_').removesuffix('.py')} ({script})",
        f"{label}: {PUBLISHERS} publishers"
        + (" while a Router consumes" if label != "publish" else ""),
        ours,
        raw=raw,
        raw_label="the raw client batching 1,000 per call (see the script)",
        note=note.strip(),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
