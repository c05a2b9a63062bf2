"""Ingest throughput: signed Razorpay webhooks through ``eventmill`` vs a bare FastAPI endpoint.

Starts the servers as subprocesses on uvicorn with the same options (httptools, uvloop,
no access log): a bare FastAPI endpoint that reads the body and answers 200, and
``eventmill serve`` as installed (all roles; then the ingest role only) with a SQLite
store and a memory:// or sqlite:/// bus, where every request
is a distinct, correctly signed Razorpay webhook, verified, parsed, validated, stored
and published before its 200. All three run for the whole benchmark; after a 1 s
warm-up each, ``--rounds`` rounds load them in turn for ``--seconds`` each with the
same load generator (``--connections`` keep-alive HTTP/1.1 connections, requests back
to back), so background load on a shared machine hits them alike. Prints every
round's requests/s, p50/p99 latency and ratio to the bare endpoint, then the medians
(target >= 0.4x).

Load generator: ``wrk`` (one thread; a Lua script replays pre-signed requests, none
twice) when it is on the PATH, so the client costs the shared CPUs little and the
same for every server; otherwise (or with ``--client python``) an asyncio client on
uvloop. Either way it runs in its own process, apart from the servers.

Usage: ``python benchmarks/bench_ingest.py [--seconds 5] [--rounds 3]
[--connections 32] [--client auto|wrk|python]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import free_port
from _payloads import razorpay_payment_captured
from _report import record

SECRET = "bench_webhook_secret"
WARM_SECONDS = 1.0
WRK_SCRIPT = """
local reqs, n, i = {}, 0, 0 -- this run's pre-signed requests, sent in order
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  for rec in string.gmatch(data, "([^%z]+)") do
    n = n + 1
    reqs[n] = rec
  end
end
request = function()
  i = i + 1
  if i > n then
    i = 1 -- ran out: repeats are answered as duplicates (not expected with enough requests)
  end
  return reqs[i]
end
"""
BARE_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()


@app.post("/webhooks/razorpay")
async def receive(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")
"""


def webhook(i: int) -> bytes:
    """One distinct payment.captured webhook as an HTTP/1.1 request (keep-alive)."""
    body = json.dumps(
        razorpay_payment_captured(i, users=1000),
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
    """The Python client: ``conns`` asyncio connections over ``requests`` (a slice no
    other run uses, so no webhook is sent twice). Run it on uvloop."""
    result = Result(name, 0, 0, seconds, [])
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(
        *(_connection(port, requests, c, conns, stop_at, result) for c in range(conns))
    )
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class Run:
    name: str
    rps: float
    errors: int
    p50: float
    p99: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(port: int, script: Path, requests: Path, conns: int, seconds: float) -> str:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds:g}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/webhooks/razorpay",
        "--",
        str(requests),
    ]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _parse_wrk(name: str, out: str) -> Run:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        q: float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(x) for x in sock.groups()) if sock else 0
    return Run(name, rps, errors, lat.get("50", float("nan")), lat.get("99", float("nan")))


def wrk_load(name: str, port: int, tmp: Path, part: str, conns: int, seconds: float) -> Run:
    """One wrk run replaying ``<part>.req`` (every run gets its own requests)."""
    return _parse_wrk(name, _wrk(port, tmp / "wrk.lua", tmp / f"{part}.req", conns, seconds))


def python_load(name: str, port: int, requests: list[bytes], conns: int, seconds: float) -> Run:
    import uvloop

    r = uvloop.run(load(name, port, requests, conns, seconds))
    return Run(r.name, r.rps, r.errors, r.pct(0.50), r.pct(0.99))


def start_server(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """``args`` ``["serve"]``: ``eventmill serve``, as installed (uvicorn with uvloop and
    httptools, the GC frozen after start-up); otherwise uvicorn serving ``args``."""
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if args == ["serve"]:
        command = [str(Path(sys.executable).with_name("eventmill")), "serve", *where]
    else:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            *args,
            *where,
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stderr=subprocess.DEVNULL if args == ["serve"] else None
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
    parser.add_argument("--seconds", type=float, default=5.0, help="per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    opts = parser.parse_args()
    client = opts.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on the PATH (apt-get install wrk), or use --client python")
    # Distinct webhooks for every run (a repeat would be answered as a duplicate). The
    # eventmill servers have stores of their own, so they may replay the same ones.
    per_run = int(opts.seconds * 15_000)
    parts = ["warm"] + [f"round-{r}" for r in range(opts.rounds)]
    sizes = [int(WARM_SECONDS * 15_000)] + [per_run] * opts.rounds
    requests: dict[str, list[bytes]] = {}
    first = 0
    for part, size in zip(parts, sizes, strict=True):
        requests[part] = [webhook(i) for i in range(first, first + size)]
        first += size
    tmp = Path(tempfile.mkdtemp(prefix="eventmill-bench-"))
    (tmp / "bare_app.py").write_text(BARE_APP)
    if client == "wrk":
        (tmp / "wrk.lua").write_text(WRK_SCRIPT)
        for part in parts:
            (tmp / f"{part}.req").write_bytes(b"\0".join(requests[part]))
    servers: list[tuple[str, list[str], dict[str, str]]] = [
        ("bare FastAPI 200", ["bare_app:app", "--app-dir", str(tmp)], {}),
    ]
    # The SQLite bus as `eventmill serve` configures it by default (synchronous=normal,
    # like the store).
    for bus in ("memory://", f"sqlite:///{tmp}/bus.db?synchronous=normal"):
        env = {
            "EVENTMILL_DATA_DIR": str(tmp / "data"),
            "EVENTMILL_BUS_URL": bus,
            "EVENTMILL_STORE_URL": f"sqlite:///{tmp}/events-{len(servers)}.db",
            "RAZORPAY_WEBHOOK_SECRET": SECRET,
            "EVENTMILL_LOG_LEVEL": "warning",
        }
        label = "eventmill, sqlite store, " + bus.split(":")[0] + " bus"
        servers.append((label, ["serve"], env))
    # The same process with the ingest role only (an ingest node of a deployment scaled by
    # role): the rows above also run the delivery fan-out and the realtime hub, which read
    # every event back from the store.
    servers.append(
        (
            "eventmill, sqlite store, sqlite bus, ingest role",
            ["serve"],
            {
                **env,
                "EVENTMILL_BUS_URL": f"sqlite:///{tmp}/bus-ingest.db?synchronous=normal",
                "EVENTMILL_STORE_URL": f"sqlite:///{tmp}/events-{len(servers)}.db",
                "EVENTMILL_ROLES": "ingest",
            },
        )
    )

    def run(name: str, port: int, part: str, seconds: float) -> Run:
        if client == "wrk":
            return wrk_load(name, port, tmp, part, opts.connections, seconds)
        return python_load(name, port, requests[part], opts.connections, seconds)

    # All servers run for the whole benchmark (an idle one costs no CPU); the rounds
    # load them in turn, so a change in the machine's background load hits them alike.
    results: dict[str, list[Run]] = {name: [] for name, _, _ in servers}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for _, args, env in servers:
            ports.append(free_port())
            procs.append(start_server(args, env, ports[-1]))
        for (name, _, _), port in zip(servers, ports, strict=True):
            run(name, port, "warm", WARM_SECONDS)
        for r in range(opts.rounds):
            for (name, _, _), port in zip(servers, ports, strict=True):
                results[name].append(run(name, port, f"round-{r}", opts.seconds))
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    generator = "wrk, 1 thread" if client == "wrk" else "Python asyncio client on uvloop"
    print(
        f"\ningest: {opts.connections} keep-alive connections, {opts.rounds} rounds of "
        f"{opts.seconds:g} s per server, {os.cpu_count()} CPUs; load generator: {generator} "
        "(own process, same machine)"
    )
    bare = results[servers[0][0]]
    print(f"{'server':<40} {'round':>5} {'req/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, runs in results.items():
        for r, (one, base) in enumerate(zip(runs, bare, strict=True)):
            print(
                f"{name:<40} {r + 1:>5} {one.rps:>9,.0f} {one.rps / base.rps:>6.2f}x "
                f"{one.p50:>8.1f} {one.p99:>8.1f}"
            )
    print(
        f"\nmedian of {opts.rounds} rounds (ratio = median of the per-round ratios; target >= 0.4x)"
    )
    print(f"{'server':<40} {'req/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8}")
    for name, runs in results.items():
        ratios = [one.rps / base.rps for one, base in zip(runs, bare, strict=True)]
        print(
            f"{name:<40} {statistics.median(r.rps for r in runs):>9,.0f} "
            f"{statistics.median(ratios):>6.2f}x {statistics.median(r.p50 for r in runs):>8.1f} "
            f"{statistics.median(r.p99 for r in runs):>8.1f} {sum(r.errors for r in runs):>8}"
        )
        if runs is not bare:  # the line benchmarks/run reads (see _report.py)
            record(
                "ingest",
                f"signed Razorpay webhooks, {name.removeprefix('eventmill, ')}",
                statistics.median(r.rps for r in runs),
                unit="req/s",
                short=name.removeprefix("eventmill, sqlite store, "),
                raw=statistics.median(r.rps for r in bare),
                raw_label=f"bare FastAPI endpoint reading the body ({generator})",
                ratio_raw=statistics.median(ratios),
                peer_note="-",
                note=f"{opts.connections} connections, {opts.rounds} x {opts.seconds:g} s; "
                f"p50 {statistics.median(r.p50 for r in runs):.1f} ms, "
                f"p99 {statistics.median(r.p99 for r in runs):.1f} ms; "
                f"non-200: {sum(r.errors for r in runs)}",
                rounds={"ours": [r.rps for r in runs], "raw": [r.rps for r in bare]},
            )


if __name__ == "__main__":
    main()
