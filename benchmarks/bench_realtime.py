"""Realtime fan-out: N WebSocket connections to one ``eventmill serve`` node (one user
each), one event per connected user in a burst; beside a bare ``websockets`` server
sending the same messages to the same number of connections.

Both servers run side by side, each with its N connections open, and take turns: a
burst on the bare server, then one on eventmill (per mode), ``--bursts`` times (default
5), each once both servers are quiet (what the last burst left behind, a journal
flush say, is done). This machine kind's speed moves from minute to minute (the
same burst on the same server took 200 ms or 430 ms), so bursts taken in turn meet
the same moods; each figure is the median of its server's bursts, and every burst's
p99 is printed too. Figures per ``--connections`` (default 1,000 and 10,000):

* latency p50 / p99 - from the burst's start to each client's receipt of its message;
* messages/s - N / (last receipt - burst start);
* memory per connection - the server process's resident memory with N connections
  open minus before they were opened, divided by N;
* CPU per message - the server process's CPU time (user + system) during the burst
  divided by N, and the clients' (their process's) likewise;
* full garbage collections in each server while the bursts ran, and the longest
  (nothing else runs in the server meanwhile): eventmill's from its ``/metrics``
  histogram (to its bucket's bound), the bare server's from ``gc.callbacks``.

Every event message a client gets is parsed once the burst is over (not on the clock)
and must be for that client's user.

eventmill is measured two ways:

* ``fan-out`` - the events are committed to the node's store (one transaction, as
  ingest does) and one message with their position is published on the bus (Redis),
  as ingest does after storing: the hub wakes, reads them from the store and sends
  each to its user's connection. This is what the bare server does (it holds the
  messages in memory and sends them on a trigger), so the ratio compares the two;
* ``end-to-end`` - on the same node and connections, the events are POSTed to
  ``/v1/events`` in batches of 100 (store, bus, hub, socket): the whole path, for
  reference.

Clients are minimal asyncio WebSocket clients (a few KB each), each server's in a
process of their own, so the client side costs the same for both servers. The
open-file limit is raised to its hard limit. Needs Redis on 127.0.0.1:6379. On a
shared 2-core machine the clients, the server and (end-to-end) the store share the
CPUs: compare the ratio, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from prometheus_client.parser import text_string_to_metric_families

from _report import record
from eventmill import PubSub, open_pubsub
from eventmill.events import Event
from eventmill.store import Store, open_store

SECRET = "bench-realtime-secret-of-32-bytes-at-least"
VENV_BIN = Path(sys.executable).parent
CONNECT_CONCURRENCY = 200
QUIET_WINDOW = 0.2
QUIET_CPU = 0.02
"""A server is quiet when it used at most ``QUIET_CPU`` CPU seconds in ``QUIET_WINDOW``
(10 %; idle, 10,000 connections' pings take ~1 %)."""


def raise_open_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit (the processes started
    from here inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU the server process uses over a burst."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server = cpu_s(pid)

    def per_message_us(self, n: int) -> float:
        return (cpu_s(self.pid) - self.server) / n * 1e6


async def settle(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until every process of ``pids`` is quiet: what the last burst left behind
    (a journal flush, the collector, the bare server's own bookkeeping) is done before
    the next burst starts, on either server."""
    deadline = time.monotonic() + timeout
    before = [cpu_s(pid) for pid in pids]
    while time.monotonic() < deadline:
        await asyncio.sleep(QUIET_WINDOW)
        now = [cpu_s(pid) for pid in pids]
        if all(b - a <= QUIET_CPU for a, b in zip(before, now, strict=True)):
            return
        before = now


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- a minimal WebSocket client -------------------------------------------------------


class Burst:
    """Counts the clients that got their event in the current burst."""

    def __init__(self, clients: int) -> None:
        self.target = clients
        self.count = 0
        self.done = asyncio.Event()

    def got_one(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def rearm(self, clients: list[Client]) -> None:
        """Forget the last burst (on every client too)."""
        self.count = 0
        self.done = asyncio.Event()
        for client in clients:
            client.received_at = None
            client.message = None


class Client(asyncio.Protocol):
    """Handshake, then read frames; answers pings; notes when its event arrived."""

    def __init__(self, host: str, path: str, burst: Burst) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.path = path
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()
        self.received_at: float | None = None
        self.message: bytes | None = None
        """The event message, parsed and checked after the clock stops."""
        self.transport: asyncio.Transport | None = None
        self.burst = burst
        self.closed = False
        self.replies: asyncio.Queue[bytes] | None = None
        """Where other text messages go, when set (the bare server's control replies)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for fut in (self.upgraded, self.ready):
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
                fut.exception()  # retrieved: an aborted client is not an error

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            del self.buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(ConnectionError(status.decode()))
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode == 0x1:
                self._text(payload)
            elif opcode == 0x9:  # ping -> pong (client frames are masked)
                self._send(0xA, payload)
            elif opcode == 0x8:
                self.closed = True

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        assert len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"event"'):
            self.received_at = time.perf_counter()
            self.message = payload
            self.burst.got_one()
        elif not self.ready.done() and payload.startswith(b'{"type":"connected"'):
            self.ready.set_result(None)
        elif self.replies is not None:
            self.replies.put_nowait(payload)


async def open_clients(port: int, paths: list[str], wait_ready: bool) -> tuple[list[Client], Burst]:
    loop = asyncio.get_running_loop()
    burst = Burst(len(paths))
    clients: list[Client] = []
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(path: str) -> None:
        async with limit:
            _, client = await loop.create_connection(
                lambda: Client(f"127.0.0.1:{port}", path, burst), "127.0.0.1", port
            )
            await asyncio.wait_for(client.upgraded, 60)
            if wait_ready:
                await asyncio.wait_for(client.ready, 60)
            clients.append(client)

    await asyncio.gather(*(one(p) for p in paths))
    return clients, burst


def close_clients(clients: list[Client]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


def wrong_user(clients: list[Client], users: dict[str, str]) -> str | None:
    """What is wrong if a client got an event of another user than its own (``users``:
    each client's user by its path), else ``None``."""
    for client in clients:
        user = users[client.path]
        if client.message is not None:
            event = orjson.loads(client.message)["payload"]
            if event["user_id"] != user:
                return f"{user}'s connection got {event['user_id']}'s event"
    return None


def figures(
    name: str,
    n: int,
    t0: float,
    received: list[float],
    memory_kib: float,
    cpu: tuple[float, float],
) -> dict[str, Any]:
    """The burst's figures from when each client got its message (``received``,
    ``time.perf_counter`` values: the system's monotonic clock, the same in every
    process here)."""
    got = sorted(t - t0 for t in received)
    missing = n - len(got)
    if not got:
        raise RuntimeError(f"{name}: no client received its message")
    span = got[-1]
    return {
        "name": name,
        "n": n,
        "p50_ms": got[len(got) // 2] * 1000,
        "p99_ms": got[min(len(got) - 1, int(len(got) * 0.99))] * 1000,
        "msgs_per_s": len(got) / span if span > 0 else float("inf"),
        "kib_per_conn": memory_kib / n,
        "missing": missing,
        "server_cpu_us": cpu[0],
        "client_cpu_us": cpu[1],
    }


# -- the clients' processes --------------------------------------------------------
#
# Each server's clients run in a process of their own: both servers' connections stay
# open at once (so their bursts can take turns), and one process may hold only so many
# sockets (the hard open-file limit, 20,000 on this machine kind).


async def client_worker(port: int, spec_file: str) -> None:
    """A clients' process: open the connections of ``spec_file`` (paths, and users to
    check messages against), then on each ``arm`` line from stdin answer ``armed``,
    wait for every client's message and answer with when each came (one JSON line)."""
    spec = orjson.loads(Path(spec_file).read_bytes())
    paths: list[str] = spec["paths"]
    raise_open_file_limit()
    clients, burst = await open_clients(port, paths, True)
    users = dict(zip(paths, spec["users"], strict=True)) if spec["users"] else None
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print("ready", flush=True)
    while (await commands.readline()).strip() == b"arm":
        burst.rearm(clients)
        cpu = time.process_time()
        print("armed", flush=True)
        await asyncio.wait_for(burst.done.wait(), 300)
        cpu = time.process_time() - cpu
        answer = {
            "received": [c.received_at for c in clients if c.received_at is not None],
            "cpu_s": cpu,
            "wrong": wrong_user(clients, users) if users else None,
        }
        print(orjson.dumps(answer).decode(), flush=True)
    close_clients(clients)


class ClientProcess:
    """The main process's handle on a clients' process (:func:`client_worker`)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, port: int, paths: list[str], users: list[str] | None
    ) -> AsyncIterator[ClientProcess]:
        with tempfile.TemporaryDirectory() as tmp:
            spec = Path(tmp) / "clients.json"
            spec.write_bytes(orjson.dumps({"paths": paths, "users": users}))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client-worker",
                str(port),
                str(spec),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                limit=2**26,
            )
            try:
                side = cls(proc)
                if await side._line(120) != b"ready":
                    raise RuntimeError("the clients' process did not connect")
                yield side
            finally:
                if proc.returncode is None:
                    assert proc.stdin is not None
                    proc.stdin.write(b"quit\n")
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(proc.wait(), 30)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def _line(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).strip()

    async def arm(self) -> None:
        """Forget the last burst; return once the clients wait for the next."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"arm\n")
        if await self._line(60) != b"armed":
            raise RuntimeError("the clients' process did not arm")

    async def received(self, name: str) -> tuple[list[float], float]:
        """When each client got its message in this burst, and the clients' CPU seconds."""
        line = await self._line(600)
        if not line:
            raise RuntimeError(f"{name}: the clients' process ended (see its error above)")
        answer = orjson.loads(line)
        if answer["wrong"]:
            raise RuntimeError(f"{name}: {answer['wrong']}")
        return answer["received"], answer["cpu_s"]


def median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median burst's figures (each figure's own median), with every burst's p99."""
    out = dict(rows[0])
    for key in ("p50_ms", "p99_ms", "msgs_per_s", "server_cpu_us", "client_cpu_us"):
        out[key] = statistics.median(r[key] for r in rows)
    out["missing"] = max(r["missing"] for r in rows)
    out["p99s"] = [r["p99_ms"] for r in rows]
    out["rates"] = [r["msgs_per_s"] for r in rows]
    return out


# -- the bare websockets server ------------------------------------------------------

BARE_SERVER = r"""
import asyncio, contextlib, gc, sys, time
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

frames = [line.rstrip("\n") for line in open(sys.argv[2])]
conns = {}
full_gc = {"longest": 0.0, "count": 0, "started": 0.0}

def on_gc(phase, info):  # the longest full collection, as eventmill's /metrics has it
    if info["generation"] == 2:
        if phase == "start":
            full_gc["started"] = time.perf_counter()
        else:
            full_gc["count"] += 1
            pause = time.perf_counter() - full_gc["started"]
            full_gc["longest"] = max(full_gc["longest"], pause)

gc.callbacks.append(on_gc)

async def handler(ws):
    path = ws.request.path
    if path.startswith("/control"):
        with contextlib.suppress(ConnectionClosed):  # the bench ends: it drops the connection
            async for message in ws:  # one burst per message
                if message == "gc":  # since the last ask
                    await ws.send(f"gc {full_gc['longest']} {full_gc['count']}")
                    full_gc.update(longest=0.0, count=0)
                    continue
                for i, frame in enumerate(frames):
                    c = conns.get(i)
                    if c is not None:
                        await c.send(frame)
                await ws.send("sent")
        return
    i = int(path.split("user=")[1])
    conns[i] = ws
    await ws.send('{"type":"connected"}')
    try:
        await ws.wait_closed()
    finally:
        conns.pop(i, None)

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None, max_queue=16):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


@contextlib.contextmanager
def bare_server(frames: list[str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare.py"
        script.write_text(BARE_SERVER)
        frames_file = Path(tmp) / "frames.jsonl"
        frames_file.write_text("\n".join(frames) + "\n")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port), str(frames_file)], stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            yield port, proc
        finally:
            proc.terminate()
            proc.wait(10)


class BareSide:
    """The bare server with ``n`` connections open; :meth:`burst` runs one burst."""

    name = "bare websockets"

    def __init__(
        self, n: int, proc: subprocess.Popen[bytes], clients: ClientProcess, memory_kib: float
    ) -> None:
        self.n, self.proc, self.clients, self.memory_kib = n, proc, clients, memory_kib
        self.control: Client | None = None

    async def burst(self) -> dict[str, Any]:
        assert self.control is not None
        assert self.control.transport is not None
        await self.clients.arm()
        mask = os.urandom(4)
        cpu = Cpu(self.proc.pid)
        t0 = time.perf_counter()
        self.control.transport.write(
            bytes([0x81, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(b"go"))
        )
        received, client_s = await self.clients.received(self.name)
        used = (cpu.per_message_us(self.n), client_s / self.n * 1e6)
        return figures(self.name, self.n, t0, received, self.memory_kib, used)

    async def full_gc(self) -> tuple[float, int]:
        """The server's longest full garbage collection since the last call (seconds),
        and how many it made."""
        assert self.control is not None
        assert self.control.replies is not None
        self.control._send(0x1, b"gc")
        while True:
            reply = await asyncio.wait_for(self.control.replies.get(), 30)
            if reply.startswith(b"gc "):
                longest, count = reply.split()[1:]
                return float(longest), int(count)


@contextlib.asynccontextmanager
async def bare_side(n: int) -> AsyncIterator[BareSide]:
    with bare_server(frames_like_eventmill(n)) as (port, proc):
        await asyncio.sleep(0.5)
        before = rss_kib(proc.pid)
        paths = [f"/ws?user={i}" for i in range(n)]
        async with ClientProcess.running(port, paths, None) as clients:
            await asyncio.sleep(1.0)
            side = BareSide(n, proc, clients, rss_kib(proc.pid) - before)
            control, _ = await open_clients(port, ["/control"], False)
            side.control = control[0]
            side.control.replies = asyncio.Queue()
            try:
                yield side
            finally:
                close_clients(control)


# -- eventmill -------------------------------------------------------------------------


@contextlib.contextmanager
def eventmill_server(tmp: Path, redis_prefix: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "EVENTMILL_DATA_DIR": str(tmp),
        "EVENTMILL_STORE_URL": f"sqlite:///{tmp / 'events.db'}",
        "EVENTMILL_BUS_URL": f"redis://127.0.0.1:6379/0?prefix={redis_prefix}",
        "EVENTMILL_JWT__SECRET": SECRET,
        "EVENTMILL_LOG_LEVEL": "warning",
        "EVENTMILL_REALTIME__MAX_CONNECTIONS": "100000",
        # the hub's periodic store read must not start the burst before the clock does
        # (the events are committed just before the wake-up is published)
        "EVENTMILL_REALTIME__POLL_INTERVAL_SECONDS": "60",
        "EVENTMILL_AUDIT_ENABLED": "false",
    }
    proc = subprocess.Popen([str(VENV_BIN / "eventmill"), "serve", "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("eventmill serve did not start")
            time.sleep(0.1)
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_events(n: int, tag: str) -> list[Event]:
    return [
        Event(
            event_name="shop.payment.captured",
            source="bench",
            user_id=f"u{tag}{i}",
            payload={"payment": {"id": f"pay_{i}", "amount": 50000, "currency": "INR"}},
        )
        for i in range(n)
    ]


class EventmillSide:
    """An ``eventmill serve`` node with ``n`` connections open (one user each);
    :meth:`burst` runs one burst in a mode (``fan-out`` or ``end-to-end``)."""

    def __init__(self, n: int, tag: str, proc: subprocess.Popen[bytes]) -> None:
        self.n, self.tag, self.proc = n, tag, proc
        self.memory_kib = 0.0
        self.clients: ClientProcess | None = None
        self.store: Store | None = None
        self.bus: PubSub | None = None
        self.http: httpx.AsyncClient | None = None

    async def burst(self, mode: str) -> dict[str, Any]:
        assert self.clients is not None
        assert self.store is not None
        assert self.bus is not None
        assert self.http is not None
        n = self.n
        await self.clients.arm()
        events = make_events(n, self.tag)
        if mode == "fan-out":
            results = await self.store.events.insert_many(
                [(e, None) for e in events], published=True
            )
            last = max(r[0].position for r in results if isinstance(r, tuple))
            cpu = Cpu(self.proc.pid)
            t0 = time.perf_counter()
            # what ingest publishes after storing: the event, marked as stored, with its
            # position (here the burst's last one wakes every hub)
            wake = events[-1].to_message()
            wake.metadata.update(eventmill_stored="1", eventmill_position=str(last))
            await self.bus.publish("events", wake)
        else:
            bodies = [orjson.loads(e.to_json()) for e in events]
            cpu = Cpu(self.proc.pid)
            t0 = time.perf_counter()
            for i in range(0, n, 100):
                r = await self.http.post("/v1/events", json=bodies[i : i + 100])
                r.raise_for_status()
        name = f"eventmill {mode}"
        received, client_s = await self.clients.received(name)
        used = (cpu.per_message_us(n), client_s / n * 1e6)
        return figures(name, n, t0, received, self.memory_kib, used)

    async def full_gc(self) -> dict[float, float]:
        """The node's full garbage collections so far, by pause (its ``/metrics``
        histogram: bucket bound in seconds -> how many took at most that)."""
        assert self.http is not None
        text = (await self.http.get("/metrics")).text
        return {
            float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "eventmill_gc_pause_seconds_bucket"
            and sample.labels.get("generation") == "2"
        }


def gc_between(before: dict[float, float], after: dict[float, float]) -> tuple[float, int]:
    """How many full collections came between two :meth:`EventmillSide.full_gc` reads,
    and the bound of the bucket of the longest (seconds)."""
    diff = {le: after[le] - before.get(le, 0.0) for le in after}
    total = diff.get(float("inf"), 0.0)
    longest = min((le for le, n in diff.items() if n >= total), default=0.0)
    return (longest if total else 0.0), int(total)


@contextlib.asynccontextmanager
async def eventmill_side(n: int) -> AsyncIterator[EventmillSide]:
    tag = uuid.uuid4().hex[:6]
    prefix = f"bench-rt-{tag}:"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        store = await open_store(f"sqlite:///{tmp / 'events.db'}")
        _, key = await store.api_keys.create("bench", ["publish"])
        await store.close()
        with eventmill_server(tmp, prefix) as (port, proc):
            side = EventmillSide(n, tag, proc)
            await asyncio.sleep(0.5)
            before = rss_kib(proc.pid)
            now = int(time.time())
            paths = [
                "/ws?token=" + jwt.encode({"sub": f"u{tag}{i}", "exp": now + 3600}, SECRET, "HS256")
                for i in range(n)
            ]
            users = [f"u{tag}{i}" for i in range(n)]
            async with ClientProcess.running(port, paths, users) as clients:
                await asyncio.sleep(1.0)
                side.clients = clients
                side.memory_kib = rss_kib(proc.pid) - before
                side.store = await open_store(f"sqlite:///{tmp / 'events.db'}")
                side.bus = await open_pubsub(f"redis://127.0.0.1:6379/0?prefix={prefix}")
                side.http = httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    timeout=120,
                    headers={"Authorization": f"Bearer {key}"},
                )
                try:
                    yield side
                finally:
                    await side.http.aclose()
                    await side.bus.close()
                    await side.store.close()
        with contextlib.suppress(Exception):
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
            keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()


def frames_like_eventmill(n: int) -> list[str]:
    """The messages eventmill sends for the burst (same shape and size)."""
    out = []
    for i, e in enumerate(make_events(n, "bare")):
        out.append(f'{{"type":"event","position":{i + 1},"payload":{e.to_json().decode()}}}')
    return out


def show(row: dict[str, Any], base: dict[str, Any] | None) -> None:
    ratio = f"  {row['msgs_per_s'] / base['msgs_per_s']:.2f}x bare" if base else ""
    missing = f"  MISSING {row['missing']}" if row["missing"] else ""
    p99s = "/".join(f"{p:.0f}" for p in row["p99s"])
    print(
        f"{row['name']:<22} n={row['n']:>6}  p50 {row['p50_ms']:8.1f} ms"
        f"  p99 {row['p99_ms']:8.1f} ms  {row['msgs_per_s']:9.0f} msg/s"
        f"  {row['kib_per_conn']:6.1f} KiB/conn{ratio}{missing}  (p99 of each burst {p99s})"
        f"  CPU/msg server {row['server_cpu_us']:.0f} us, clients {row['client_cpu_us']:.0f} us",
        flush=True,
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, nargs="*", default=[1_000, 10_000])
    ap.add_argument("--modes", nargs="*", default=["fan-out", "end-to-end"])
    ap.add_argument("--bursts", type=int, default=5, help="bursts per run (medians printed)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1,000 connections, 1 burst")
    ap.add_argument("--client-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_worker:
        await client_worker(int(args.client_worker[0]), args.client_worker[1])
        return
    if args.quick:
        args.connections, args.bursts = [1_000], 1
    limit = raise_open_file_limit()
    print(f"open-file limit {limit}; load average {os.getloadavg()[0]:.2f}; cpus {os.cpu_count()}")
    for n in args.connections:
        if n + 100 > limit:
            print(f"skip n={n}: the open-file limit is {limit}")
            continue
        rows: dict[str, list[dict[str, Any]]] = {"bare": [], **{m: [] for m in args.modes}}
        async with bare_side(n) as bare, eventmill_side(n) as node:
            # One burst of each in turn, on connections that stay open: both servers
            # meet the machine's same moods (its speed moves between minutes here).
            servers = [bare.proc.pid, node.proc.pid]
            gc_before = await node.full_gc()
            await bare.full_gc()  # from now on
            for _ in range(args.bursts):
                await settle(servers)
                rows["bare"].append(await bare.burst())
                for mode in args.modes:
                    await settle(servers)
                    rows[mode].append(await node.burst(mode))
            gc_node = gc_between(gc_before, await node.full_gc())
            gc_bare = await bare.full_gc()
        base = median(rows["bare"])
        show(base, None)
        gc_note = (
            f"full garbage collections while the bursts ran: eventmill {gc_node[1]}, "
            f"the longest <= {gc_node[0] * 1000:.0f} ms (its /metrics buckets); "
            f"bare {gc_bare[1]}, the longest {gc_bare[0] * 1000:.0f} ms"
        )
        print(gc_note, flush=True)
        for mode in args.modes:
            row = median(rows[mode])
            show(row, base)
            record(
                "realtime",
                f"{n:,} WebSocket connections, one event each in a burst ({mode})",
                row["msgs_per_s"],
                short=f"{n:,} {mode}",
                raw=base["msgs_per_s"],
                raw_label="bare websockets server sending the same messages",
                ratio_raw=row["msgs_per_s"] / base["msgs_per_s"],
                peer_note="-",
                rounds={"ours": row["rates"], "raw": base["rates"]},
                note=f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms "
                f"(bare {base['p50_ms']:.0f} / {base['p99_ms']:.0f} ms); "
                f"{row['kib_per_conn']:.1f} KiB/conn (bare {base['kib_per_conn']:.1f}); "
                f"missing {row['missing']}; medians of {args.bursts} bursts taken in turn "
                f"with the bare server's, p99 of each "
                f"{'/'.join(f'{p:.0f}' for p in row['p99s'])} ms "
                f"(bare {'/'.join(f'{p:.0f}' for p in base['p99s'])}); server CPU per "
                f"message {row['server_cpu_us']:.0f} us (bare {base['server_cpu_us']:.0f}); "
                f"{gc_note}",
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
