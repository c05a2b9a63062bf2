"""Through a real ``eventmill serve`` process: the crash between store and publish, and
a huge body cut off at the socket."""

from __future__ import annotations

import asyncio
import select
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from eventmill import open_pubsub
from eventmill.store import open_store
from tests import payloads
from tests.ingest.support import RAZORPAY_SECRET, Server, drain_until_sentinel

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, store_url: str, bus_url: str, **extra: str) -> dict[str, str]:
    return {
        "EVENTMILL_DATA_DIR": str(tmp_path / "data"),
        "EVENTMILL_BUS_URL": bus_url,
        "EVENTMILL_STORE_URL": store_url,
        "RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
        "EVENTMILL_LOG_LEVEL": "warning",
        "EVENTMILL_FAULT": "",
        **extra,
    }


async def test_crash_between_store_and_publish_is_relayed_after_restart(
    tmp_path: Path, store_url: str
) -> None:
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    body = payloads.dumps(payloads.payment_captured(payment_id="pay_crash"))
    event_id = f"evt_{uuid.uuid4().hex[:14]}"
    headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, event_id)
    log = tmp_path / "server.log"

    crashing = Server(_env(tmp_path, store_url, bus_url, EVENTMILL_FAULT="crash_after_store"), log)
    crashing.start()
    try:
        with pytest.raises(httpx.TransportError):  # the process dies mid-request: no answer
            httpx.post(
                f"{crashing.url}/webhooks/razorpay", content=body, headers=headers, timeout=30
            )
        assert crashing.wait() == 70, crashing.log_text()
    finally:
        crashing.stop()

    store = await open_store(store_url)
    try:
        [pending] = await store.events.unpublished(limit=10, older_than=0)
        assert pending.external_id == event_id
    finally:
        await store.close()

    bus = await open_pubsub(bus_url)
    try:
        # a new group replays the topic from its oldest message
        sub = await bus.subscribe("events", group=f"crash-{uuid.uuid4().hex[:8]}")
        server = Server(_env(tmp_path, store_url, bus_url), log)
        server.start()
        try:
            async with asyncio.timeout(60):  # hang guard: the relay publishes on start
                relayed = await sub.__anext__()
            relayed.ack()
            assert relayed.id == pending.id
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                again = await client.post("/webhooks/razorpay", content=body, headers=headers)
            assert again.status_code == 200, again.text
            assert again.json() == {"id": pending.id, "duplicate": True}
            after = await drain_until_sentinel(bus, sub)
            assert after == [], "the duplicate was published again"
        finally:
            server.stop()
        await sub.close()
    finally:
        await bus.close()


def test_huge_body_is_cut_off_at_the_socket(tmp_path: Path) -> None:
    env = _env(
        tmp_path,
        f"sqlite:///{tmp_path / 'events.db'}",
        "memory://",
        EVENTMILL_MAX_BODY_BYTES=str(256 * 1024),
    )
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        for declared in (True, False):
            offered = 512 * 1024 * 1024  # 512 MiB offered, never sent in full
            head = [
                "POST /webhooks/razorpay HTTP/1.1",
                f"Host: 127.0.0.1:{server.port}",
                "Content-Type: application/json",
                "X-Razorpay-Signature: 00",
                f"Content-Length: {offered}" if declared else "Transfer-Encoding: chunked",
            ]
            chunk = b"x" * 65536
            framed = chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk)
            sent = 0
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
                sock.setblocking(False)
                response = b""
                while sent < offered and b"\r\n\r\n" not in response:
                    readable, writable, _ = select.select([sock], [sock], [], 5)
                    if readable:
                        data = sock.recv(65536)
                        if not data:
                            break
                        response += data
                    elif writable:
                        try:
                            sent += sock.send(framed)
                        except (BrokenPipeError, ConnectionResetError):
                            break
                sock.setblocking(True)
                while b"\r\n\r\n" not in response:
                    data = sock.recv(65536)
                    if not data:
                        break
                    response += data
            assert response.startswith(b"HTTP/1.1 413"), response[:200]
            assert sent < 64 * 1024 * 1024, f"sent {sent} bytes before the answer"
    finally:
        server.stop()


def _make_key(store_url: str) -> str:
    async def create() -> str:
        store = await open_store(store_url)
        try:
            _, plaintext = await store.api_keys.create("disconnect-test", {"admin"})
            return plaintext
        finally:
            await store.close()

    return asyncio.run(create())


def test_a_client_leaving_mid_body_leaves_no_traceback(tmp_path: Path) -> None:
    """Content-Length: 100 with 2 bytes sent, or a bad chunk size, then the client is
    gone: at most one log line each (uvicorn's own for the bad chunk), no traceback."""
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    key = _make_key(store_url)
    env = _env(
        tmp_path,
        store_url,
        "memory://",
        EVENTMILL_LOG_LEVEL="debug",
        EVENTMILL_SOURCES='{"acme": {"scheme": "hmac", "secrets": ["s3cret"]}}',
    )
    log = tmp_path / "server.log"
    server = Server(env, log)
    server.start()
    try:
        start = log.stat().st_size
        heads = {
            "/v1/events": f"Authorization: Bearer {key}",
            "/webhooks/razorpay": "X-Razorpay-Signature: 00",
            "/webhooks/acme": "X-Signature: 00",
        }
        sent = 0
        for path, auth in heads.items():
            for framing, partial in (
                ("Content-Length: 100", b'{"'),
                ("Transfer-Encoding: chunked", b'2\r\n{"\r\nzz\r\n'),  # "zz": no chunk size
            ):
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"
                    f"Content-Type: application/json\r\n{framing}\r\n\r\n"
                )
                with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                    sock.sendall(head.encode() + partial)
                sent += 1

        def handled() -> int:
            text = log.read_bytes()[start:].decode(errors="replace")
            return text.count("the client disconnected")

        deadline = time.monotonic() + 30  # hang guard: each disconnect is logged at DEBUG
        while handled() < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_bytes()[start:].decode(errors="replace")
        assert handled() == sent, text
        assert "Traceback" not in text
        assert "Exception in ASGI application" not in text
        loud = [
            line
            for line in text.splitlines()
            if line.split(" ", 1)[0].rstrip(":") in ("INFO", "WARNING", "ERROR", "CRITICAL")
            or any(f" {level} " in line for level in ("INFO", "WARNING", "ERROR", "CRITICAL"))
        ]
        assert len(loud) <= sent, loud  # one line at most per request (uvicorn's 400)
        # and the server still answers
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
