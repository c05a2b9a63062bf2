"""The whole service, end to end, on every bus: a signed Razorpay ``payment.captured``
webhook posted to a running ``eventmill serve`` reaches the user's local HTTP endpoint as
a signed delivery, that user's WebSocket client, and the store; ``eventmill trace``
shows the hops. Then the same flow across two processes with different roles, and a
SIGTERM under load that loses nothing and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.brokers import BUSES, broker_bus_url
from tests.conftest import free_port
from tests.ingest.support import VENV_BIN, pg_store_url
from tests.payloads import dumps, payment_event, razorpay_headers
from tests.pubsub._kafka_server import TansuServer, tansu_server
from tests.realtime.support import RAZORPAY_SECRET, create_key, running_node, token, ws_client

pytestmark = pytest.mark.slow


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that keeps every request it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    receiver.requests.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def webhook_ids(self) -> set[str]:
        with self._lock:
            return {h["webhook-id"] for h, _ in self.requests}

    def events(self, secret: str) -> list[dict[str, Any]]:
        """The deliveries received, each verified with the official package."""
        with self._lock:
            got = list(self.requests)
        return [Webhook(secret).verify(body, headers) for headers, body in got]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuServer]:
    with tansu_server() as server:
        yield server


@pytest.fixture
def pg_store() -> Iterator[str]:
    with pg_store_url() as url:
        yield url


@contextlib.asynccontextmanager
async def _bus(
    kind: str, tmp: Path, pg_store: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp / 'bus.db'}"
    elif kind == "postgresql":
        yield pg_store.replace("postgresql://", "postgresql://", 1)
    else:
        tansu = request.getfixturevalue("tansu") if kind == "kafka" else None
        async with broker_bus_url(kind, tansu=tansu) as url:
            yield url


async def _admin_key(store_url: str) -> str:
    return await create_key(store_url, ("admin",))


async def _endpoint(base: str, key: str, url: str, user: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        made = await client.post(
            "/v1/endpoints",
            json={"url": url, "user_id": user, "event_types": ["razorpay.payment.*"]},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert made.status_code == 201, made.text
    secret: str = made.json()["secret"]
    return secret


def _payment(user: str, amount: int) -> bytes:
    """A signed-to-be Razorpay payment.captured body for ``user``."""
    entity = {"id": f"pay_{uuid.uuid4().hex[:14]}", "amount": amount, "notes": {"user_id": user}}
    return dumps(payment_event("payment.captured", **entity))


async def _webhook(base: str, user: str, amount: int = 50_000) -> str:
    body = _payment(user, amount)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.post(
            "/webhooks/razorpay",
            content=body,
            headers=razorpay_headers(body, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex}"),
        )
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["id"]
    return event_id


async def _wait(condition: Any, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (a hang guard, not an assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def _trace(env: dict[str, str], event_id: str) -> list[str]:
    done = subprocess.run(
        [str(VENV_BIN / "eventmill"), "trace", event_id, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["hop"] for line in done.stdout.splitlines()]


def _node_env(store_url: str, bus_url: str, tmp: Path) -> dict[str, str]:
    from tests.realtime.support import env

    return env(tmp, store_url, bus_url)


@pytest.mark.parametrize("kind", BUSES)
async def test_a_signed_webhook_reaches_the_endpoint_the_browser_and_the_store(
    kind: str, tmp_path: Path, pg_store: str, request: pytest.FixtureRequest
) -> None:
    store_url = (
        pg_store
        if kind in ("postgresql", "redis", "nats", "kafka")
        else (f"sqlite:///{tmp_path / 'events.db'}")
    )
    key = await _admin_key(store_url)
    user = f"user_{uuid.uuid4().hex[:8]}"
    async with _bus(kind, tmp_path, pg_store, request) as bus_url:
        with (
            Receiver() as receiver,
            running_node(
                tmp_path,
                store_url,
                bus_url,
                key,
                EVENTMILL_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]',
            ) as node,
        ):
            secret = await _endpoint(node.url, key, receiver.url, user)
            async with ws_client(f"{node.ws_url}?token={token(user)}") as browser:
                await browser.wait_for(lambda c: c.of("connected"))
                event_id = await _webhook(node.url, user)
                await browser.wait_for(lambda c: any(e["id"] == event_id for e in c.events()))
                await _wait(lambda: receiver.requests)
            [pushed] = [e for e in browser.events() if e["id"] == event_id]
            assert pushed["event_name"] == "razorpay.payment.captured"
            assert pushed["payload"]["payment"]["amount"] == 50_000  # the snippet's path
            [delivered] = receiver.events(secret)  # signature verified
            assert delivered["id"] == event_id
            assert delivered["user_id"] == user
            async with httpx.AsyncClient(base_url=node.url) as client:
                stored = await client.get(
                    f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {key}"}
                )
            assert stored.status_code == 200
            assert stored.json()["source"] == "razorpay"
            env = _node_env(store_url, bus_url, tmp_path / "data")
            hops: list[str] = []

            def traced() -> bool:
                hops[:] = _trace(env, event_id)
                return {"stored", "delivery.attempt", "pushed"} <= set(hops)

            await _wait(traced)
            assert hops[0] == "stored"


async def test_two_processes_with_different_roles_carry_the_flow(
    tmp_path: Path, pg_store: str, request: pytest.FixtureRequest
) -> None:
    """Ingest and api on one process, delivery and realtime on the other, on Redis and
    one PostgreSQL store."""
    key = await _admin_key(pg_store)
    user = f"user_{uuid.uuid4().hex[:8]}"
    allow = {"EVENTMILL_DELIVERY__ALLOW_NETWORKS": '["127.0.0.0/8"]'}
    async with broker_bus_url("redis") as bus_url:
        with (
            Receiver() as receiver,
            running_node(
                tmp_path / "front", pg_store, bus_url, key, EVENTMILL_ROLES="ingest,api", **allow
            ) as front,
            running_node(
                tmp_path / "back",
                pg_store,
                bus_url,
                key,
                EVENTMILL_ROLES="delivery,realtime",
                **allow,
            ) as back,
        ):
            async with httpx.AsyncClient(base_url=back.url) as client:
                assert (await client.post("/webhooks/razorpay", content=b"{}")).status_code == 404
            secret = await _endpoint(front.url, key, receiver.url, user)
            async with ws_client(f"{back.ws_url}?token={token(user)}") as browser:
                await browser.wait_for(lambda c: c.of("connected"))
                event_id = await _webhook(front.url, user)
                await browser.wait_for(lambda c: any(e["id"] == event_id for e in c.events()))
                await _wait(lambda: receiver.requests)
            [delivered] = receiver.events(secret)
            assert delivered["id"] == event_id


async def test_sigterm_under_load_loses_nothing_sends_nothing_twice_and_exits_0(
    tmp_path: Path,
) -> None:
    """Webhooks are posted while the service gets SIGTERM: it exits 0 within the grace
    period; every webhook answered 2xx is stored and, after a restart, delivered; the
    shutdown sends no delivery twice."""
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    key = await _admin_key(store_url)
    user = f"user_{uuid.uuid4().hex[:8]}"
    with Receiver() as receiver:
        extra = {
            "EVENTMILL_DELIVERY__ALLOW_NETWORKS": '["127.0.0.0/8"]',
            "EVENTMILL_SHUTDOWN_GRACE_SECONDS": "10",
        }
        with running_node(tmp_path, store_url, bus_url, key, **extra) as node:
            secret = await _endpoint(node.url, key, receiver.url, user)
            accepted: list[str] = []
            stop = asyncio.Event()

            async def post_until_refused() -> None:
                async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
                    n = 0
                    while not stop.is_set():
                        body = _payment(user, 100 + n)
                        n += 1
                        headers = razorpay_headers(body, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex}")
                        try:
                            answer = await client.post(
                                "/webhooks/razorpay", content=body, headers=headers
                            )
                        except httpx.TransportError:
                            return  # the server stopped accepting
                        if answer.status_code == 200:
                            accepted.append(answer.json()["id"])

            posters = [asyncio.create_task(post_until_refused()) for _ in range(4)]
            await _wait(lambda: len(accepted) >= 50)
            proc = node.server.proc
            assert proc is not None
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 30)
            elapsed = time.monotonic() - started
            stop.set()
            await asyncio.gather(*posters)
            assert code == 0, node.server.log_text()
            assert elapsed < 15  # the grace period (10 s) and the process's own exit
            before_restart = len(receiver.requests)
            ids_before = [h["webhook-id"] for h, _ in receiver.requests]
            assert len(ids_before) == len(set(ids_before))  # nothing sent twice so far
        with running_node(tmp_path, store_url, bus_url, key, **extra) as again:
            await _wait(lambda: {e["id"] for e in receiver.events(secret)} >= set(accepted))
            async with httpx.AsyncClient(base_url=again.url) as client:
                for event_id in accepted:
                    got = await client.get(
                        f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {key}"}
                    )
                    assert got.status_code == 200, event_id
        assert before_restart <= len(receiver.requests)
