"""Ingest throughput: signed Razorpay webhooks through ``eventmill`` vs a bare FastAPI endpoint.

Starts each server as a uvicorn subprocess with the same options (httptools, uvloop,
no access log), then drives it with the same load generator: ``--connections``
keep-alive HTTP/1.1 connections, each sending requests back to back for
``--seconds``. Every eventmill request is a distinct, correctly signed Razorpay
webhook, so each one is verified, parsed, validated, stored (SQLite store) and
published (memory:// or sqlite:/// bus) before the 200. The bare endpoint reads the
body and answers 200. Prints requests/s, p50/p99 latency and the ratio to the bare
endpoint (target >= 0.4x).

Usage: ``python benchmarks/bench_ingest.py [--seconds 8] [--connections 32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SECRET = "bench_webhook_secret"
BARE_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.post("/webhooks/razorpay")
async def receive(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def webhook(i: int) -> bytes:
    """One distinct payment.captured webhook as an HTTP/1.1 request (keep-alive)."""
    body = json.dumps(
        {
            "entity": "event",
            "account_id": "acc_BFQ7uQEaa7j2z7",
            "event": "payment.captured",
            "contains": ["payment"],
            "payload": {
                "payment": {
                    "entity": {
                        "id": f"pay_{i:014d}",
                        "entity": "payment",
                        "amount": 50000,
                        "currency": "INR",
                        "status": "captured",
                        "order_id": "order_9A33XWu170gUtm",
                        "method": "card",
                        "captured": True,
                        "email": "gaurav.kumar@example.com",
                        "contact": "+919876543210",
                        "notes": {"user_id": f"user_{i % 1000}"},
                        "fee": 1180,
                        "tax": 180,
                        "created_at": 1567674599,
                    }
                }
            },
            "created_at": 1567674606,
        },
        separators=(",", ":"),
    ).encode()
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        "POST /webhooks/razorpay HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Razorpay-Signature: {sig}\r\n"
        f"X-Razorpay-Event-Id: evt_bench_{i:012d}\r\n"
        "\r\n"
    )
    return head.encode() + body


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _connection(
    port: int, requests: list[bytes], start: int, step: int, stop_at: float, out: Result
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += step
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            out.latencies.append(time.perf_counter() - t0)
            out.requests += 1
            if status != 200:
                out.errors += 1
    finally:
        writer.close()


async def load(name: str, port: int, requests: list[bytes], conns: int, seconds: float) -> Result:
    warm = Result(name, 0, 0, 1.0, [])
    warm_stop = time.perf_counter() + 1.0
    await asyncio.gather(
        *(_connection(port, requests, c, conns, warm_stop, warm) for c in range(conns))
    )
    result = Result(name, 0, 0, seconds, [])
    offset = warm.requests + conns  # never resend a warm-up webhook (it would be a duplicate)
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(
        *(_connection(port, requests, offset + c, conns, stop_at, result) for c in range(conns))
    )
    result.seconds = time.perf_counter() - t0
    return result


def start_server(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            *args,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(0.5)  # lifespan done once the port accepts; settle
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    opts = parser.parse_args()
    requests = [webhook(i) for i in range(400_000)]
    tmp = Path(tempfile.mkdtemp(prefix="eventmill-bench-"))
    (tmp / "bare_app.py").write_text(BARE_APP)
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("bare FastAPI 200", ["bare_app:app", "--app-dir", str(tmp)], {}),
    ]
    for bus in ("memory://", f"sqlite:///{tmp}/bus.db"):
        env = {
            "EVENTMILL_DATA_DIR": str(tmp / "data"),
            "EVENTMILL_BUS_URL": bus,
            "EVENTMILL_STORE_URL": f"sqlite:///{tmp}/events-{len(runs)}.db",
            "RAZORPAY_WEBHOOK_SECRET": SECRET,
            "EVENTMILL_LOG_LEVEL": "warning",
        }
        label = "eventmill, sqlite store, " + bus.split(":")[0] + " bus"
        runs.append((label, ["eventmill.app:create_app", "--factory"], env))
    results: list[Result] = []
    try:
        for name, args, env in runs:
            port = free_port()
            proc = start_server(args, env, port)
            try:
                results.append(
                    asyncio.run(load(name, port, requests, opts.connections, opts.seconds))
                )
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results[0].rps
    print(
        f"\ningest: {opts.connections} keep-alive connections, {opts.seconds:g} s per run, "
        f"{os.cpu_count()} CPUs (load generator on the same machine)"
    )
    print(f"{'server':<40} {'req/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for r in results:
        print(
            f"{r.name:<40} {r.rps:>9,.0f} {r.rps / base:>6.2f}x {r.pct(0.50):>8.1f} "
            f"{r.pct(0.99):>8.1f} {r.errors:>8}"
        )


if __name__ == "__main__":
    main()
