"""Helpers for service tests: the app with its lifespan, a real uvicorn process, bus counting,
a bus that stops answering, a store whose events table another client holds locked."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from eventmill.app import create_app, resources_of
from eventmill.events import Event
from eventmill.message import Message
from eventmill.pubsub._subscription import AsyncCloseable
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.settings import Settings
from tests import payloads
from tests.conftest import free_port, require_service

RAZORPAY_SECRET = "rzp_test_webhook_secret"
GITHUB_SECRET = "gh_test_secret"
STRIPE_SECRET = "whsec_stripe_test_secret"
HMAC_SECRET = "acme_test_secret"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"eventmill-standard-webhooks-key").decode()

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_BASE = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
VENV_BIN = Path(sys.executable).parent

SOURCES: dict[str, Any] = {
    "github": {"scheme": "github", "secrets": [GITHUB_SECRET]},
    "stripe": {"scheme": "stripe", "secrets": [STRIPE_SECRET]},
    "acme": {
        "scheme": "hmac",
        "secrets": [HMAC_SECRET],
        "header": "X-Acme-Signature",
        "algorithm": "sha512",
        "encoding": "base64",
        "prefix": "v1=",
        "id_header": "X-Acme-Delivery",
        "user_id_paths": ["customer.id"],
    },
    "std": {"scheme": "standard_webhooks", "secrets": [STANDARD_SECRET]},
}


DELIVERY_ID_HEADERS: dict[str, str | None] = {
    "razorpay": "X-Razorpay-Event-Id",
    "github": "X-GitHub-Delivery",
    "stripe": None,  # the body's "id"
    "acme": "X-Acme-Delivery",
    "std": "webhook-id",
}
"""Where each configured source carries its delivery id (the dedup key)."""


def signed(source: str, body: bytes, delivery_id: str | None = None) -> dict[str, str]:
    """Headers that make ``body`` a correctly signed webhook for ``source`` (one of
    :data:`SOURCES` or ``razorpay``), with ``delivery_id`` in the source's id header.
    Stripe's id lives in the body: put it there yourself."""
    if source == "razorpay":
        headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, delivery_id or "")
        if delivery_id is None:
            del headers["X-Razorpay-Event-Id"]
        return headers
    if source == "github":
        headers = payloads.github_headers(body, GITHUB_SECRET, delivery_id or "")
        if delivery_id is None:
            del headers["X-GitHub-Delivery"]
        return headers
    if source == "stripe":
        return payloads.stripe_headers(body, STRIPE_SECRET)
    if source == "acme":
        headers = payloads.hmac_headers(
            body,
            HMAC_SECRET,
            header="X-Acme-Signature",
            algorithm="sha512",
            encoding="base64",
            prefix="v1=",
        )
        if delivery_id is not None:
            headers["X-Acme-Delivery"] = delivery_id
        return headers
    if source == "std":  # computed here, byte for byte: the body need not be UTF-8
        msg_id = delivery_id if delivery_id is not None else f"msg_{uuid.uuid4().hex}"
        stamp = str(int(time.time()))
        key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
    raise ValueError(f"no signer for source {source!r}")


def settings_for(tmp: Path, store_url: str, **overrides: Any) -> Settings:
    """Test settings: memory bus, the given store, every receiver configured."""
    values: dict[str, Any] = {
        "data_dir": tmp / "data",
        "bus_url": "memory://",
        "store_url": store_url,
        "razorpay_webhook_secret": f"{RAZORPAY_SECRET},rzp_rotated_secret",
        "sources": SOURCES,
        "relay_interval_seconds": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and an httpx client speaking ASGI to it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://eventmill.test") as c:
            yield app, c


async def drain_until_sentinel(
    bus: Any, sub: Subscription, topic: str = "events", timeout: float = 30.0
) -> list[Message]:
    """Publish a sentinel event, then return every message that arrived before it.

    Everything published before the sentinel is delivered before it (the subscription
    preserves publish order), so the result is exactly what was published so far.
    """
    sentinel = Event(event_name="test.sentinel", source="system", id=f"sentinel_{uuid.uuid4().hex}")
    await bus.publish(topic, sentinel.to_message())
    seen: list[Message] = []
    async with asyncio.timeout(timeout):  # a hang guard, not an assertion
        while True:
            msg = await sub.__anext__()
            msg.ack()
            if msg.id == sentinel.id:
                return seen
            seen.append(msg)


class GatedBus(AsyncCloseable):
    """A real bus whose ``publish`` waits while the gate is closed: a bus that does not
    answer, for as long as a test wants. Everything else goes straight to ``inner``."""

    def __init__(self, inner: PubSub) -> None:
        self.inner = inner
        self.attempts = 0
        """How many ``publish`` calls were made (waiting or not)."""
        self._open = asyncio.Event()
        self._open.set()

    def close_gate(self) -> None:
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def publish(self, topic: str, *messages: Message) -> None:
        self.attempts += 1
        await self._open.wait()
        await self.inner.publish(topic, *messages)

    async def subscribe(self, topic: str, *, group: str | None = None) -> Subscription:
        return await self.inner.subscribe(topic, group=group)

    async def close(self) -> None:
        self._open.set()
        await self.inner.close()


def gate_bus(app: FastAPI) -> GatedBus:
    """Put a :class:`GatedBus` around the running app's bus (the requests and the relay
    publish through it; the audit handler keeps the real one) and return it."""
    ctx = resources_of(app)
    assert ctx.bus is not None
    gated = GatedBus(ctx.bus)
    ctx.bus = gated
    return gated


@contextlib.asynccontextmanager
async def events_table_locked(store_url: str) -> AsyncIterator[None]:
    """Another client holds a write lock on the store's events table in an open
    transaction (SQLite: ``BEGIN IMMEDIATE`` on the file; PostgreSQL: ``LOCK TABLE
    events IN EXCLUSIVE MODE``): the store's inserts wait, its reads do not."""
    if store_url.startswith("sqlite"):
        path = store_url.split(":///", 1)[1].split("?", 1)[0]
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                con.execute("ROLLBACK")
        finally:
            con.close()
        return
    schema = store_url.split("schema=", 1)[1].split("&", 1)[0]
    conn = await asyncpg.connect(PG_BASE)
    try:
        async with conn.transaction():
            await conn.execute(f'LOCK TABLE "{schema}".events IN EXCLUSIVE MODE')
            yield
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_BASE)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_store_url() -> Iterator[str]:
    """A PostgreSQL store URL with a schema of its own, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    schema = f"em_test_{uuid.uuid4().hex[:16]}"
    try:
        yield f"{PG_BASE}?schema={schema}"
    finally:
        asyncio.run(drop_schema(schema))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store URL: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
    else:
        with pg_store_url() as url:
            yield url


class _PortTakenError(Exception):
    pass


class Server:
    """``eventmill serve`` in a subprocess (the installed console script)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {**os.environ, **env}
        self._log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def embedded(cls, tmp: Path, **env: str) -> Server:
        """A server on the embedded store (a SQLite file in ``tmp``) and the memory bus,
        logging warnings to ``tmp/server.log``; ``env`` adds or overrides variables."""
        return cls(
            {
                "EVENTMILL_DATA_DIR": str(tmp / "data"),
                "EVENTMILL_BUS_URL": "memory://",
                "EVENTMILL_STORE_URL": f"sqlite:///{tmp / 'events.db'}",
                "EVENTMILL_LOG_LEVEL": "warning",
                **env,
            },
            tmp / "server.log",
        )

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port before we bind it
            try:
                return self._start()
            except _PortTakenError:
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("no free port")

    def _start(self) -> None:
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        self._log = self._log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "eventmill"), "serve", "--port", str(self.port)],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                fresh = self._log_path.read_bytes()[offset:].decode(errors="replace")
                if "address already in use" in fresh.lower():
                    raise _PortTakenError
                raise RuntimeError(f"server exited early: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready: {self.log_text()}")

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self._log.close()
