"""eventmill.Client and eventmill.AsyncClient against a real ``eventmill serve`` process.

A 503 is made the way production makes one: another process holds the SQLite store's
write lock, so the service cannot store within its request timeout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import eventmill
from eventmill import AsyncClient, Client, ClientConnectionError, ClientError, RetryPolicy
from eventmill.events import Event
from eventmill.store import open_store
from tests.conftest import free_port
from tests.ingest.support import Server

FAST = RetryPolicy(attempts=5, initial_backoff=0.05, max_backoff=0.5)


async def _create_key(store_url: str, *scopes: str) -> str:
    store = await open_store(store_url)
    try:
        _, plaintext = await store.api_keys.create(f"client-test-{uuid.uuid4().hex[:6]}", scopes)
        return plaintext
    finally:
        await store.close()


@dataclass
class Service:
    server: Server
    db: Path
    key: str
    read_key: str

    @property
    def url(self) -> str:
        return self.server.url


def _start_service(tmp: Path, port: int | None = None, **env: str) -> Service:
    db = tmp / "events.db"
    store_url = f"sqlite:///{db}"
    key = asyncio.run(_create_key(store_url, "publish", "read"))
    read_key = asyncio.run(_create_key(store_url, "read"))
    server = Server(
        {
            "EVENTMILL_DATA_DIR": str(tmp / "data"),
            "EVENTMILL_BUS_URL": "memory://",
            "EVENTMILL_STORE_URL": store_url,
            "EVENTMILL_REQUEST_TIMEOUT_SECONDS": "1",
            "EVENTMILL_LOG_LEVEL": "warning",
            **env,
        },
        tmp / "server.log",
    )
    if port is not None:
        server.port = port
        server.url = f"http://127.0.0.1:{port}"
    return Service(server, db, key, read_key)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = _start_service(tmp_path_factory.mktemp("client"))
    svc.server.start()
    try:
        yield svc
    finally:
        svc.server.stop()


def _name() -> str:
    return f"client.test.{uuid.uuid4().hex[:12]}"


class StoreWriteLock:
    """Another client holding the SQLite store's write lock (``BEGIN IMMEDIATE``): the
    service's inserts wait, its reads do not."""

    def __init__(self, path: Path) -> None:
        self._con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._con.execute("BEGIN IMMEDIATE")
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._con.execute("ROLLBACK")
            self._con.close()


@dataclass
class Seen:
    """What the httpx event hooks saw: one entry per attempt."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def on_request(self, request: httpx.Request) -> None:
        self.requests.append(
            (request.method, request.url.path, request.headers.get("idempotency-key"))
        )

    def on_response(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)


def _hooked(seen: Seen, on_response: Any = None) -> httpx.Client:
    hooks: dict[str, list[Any]] = {
        "request": [seen.on_request],
        "response": [seen.on_response] + ([on_response] if on_response else []),
    }
    return httpx.Client(timeout=30, event_hooks=hooks)


def _async_hooked(seen: Seen, on_response: Any = None) -> httpx.AsyncClient:
    async def request_hook(request: httpx.Request) -> None:
        seen.on_request(request)

    async def response_hook(response: httpx.Response) -> None:
        seen.on_response(response)
        if on_response is not None:
            on_response(response)

    return httpx.AsyncClient(
        timeout=30, event_hooks={"request": [request_hook], "response": [response_hook]}
    )


# -- without a server ------------------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.1, multiplier=2, max_backoff=1.0, jitter=0.5)
    for retry, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        draws = [policy.backoff(retry) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in draws)
        assert max(draws) - min(draws) > 0  # jittered, not a constant
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)


def test_the_client_module_imports_no_service_layer() -> None:
    code = (
        "import sys, eventmill.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in ("
        "['eventmill','app'], ['eventmill','cli'], ['eventmill','settings'], "
        "['eventmill','ingest'], ['eventmill','delivery'], ['eventmill','realtime'], "
        "['eventmill','web'], ['eventmill','store']))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_package_exports_the_clients_lazily() -> None:
    assert {"Client", "AsyncClient", "ClientError", "RetryPolicy"} <= set(eventmill.__all__)
    assert eventmill.Client is Client
    assert issubclass(ClientError, eventmill.EventmillError)
    assert issubclass(ClientConnectionError, ClientError)
    code = "import sys, eventmill; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_repr_never_shows_the_key() -> None:
    with Client("http://127.0.0.1:1", "em_secret_key_value") as client:
        assert "em_secret" not in repr(client)


def test_connection_refused_is_retried_a_bounded_number_of_times() -> None:
    seen = Seen()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    policy = RetryPolicy(attempts=3, initial_backoff=0.01)
    with (
        _hooked(seen) as http,
        Client(url, "em_x_y", retry=policy, http=http) as client,
        pytest.raises(ClientConnectionError) as caught,
    ):
        client.publish(_name())
    assert caught.value.status is None
    assert caught.value.code == "connection_failed"
    assert len(seen.requests) == 3
    assert len({key for _, _, key in seen.requests}) == 1  # one Idempotency-Key per call


# -- against eventmill serve -----------------------------------------------------------------


def test_publish_one_event_and_read_it_back(service: Service) -> None:
    name = _name()
    with Client(service.url, service.key) as client:
        result = client.publish(name, {"amount": 500}, user_id="user_7")
        [accepted] = result.events
        assert result.ids == [accepted.id]
        assert accepted.duplicate is False
        stored = client.event(accepted.id)
    assert (stored.event_name, stored.user_id, stored.payload) == (name, "user_7", {"amount": 500})
    assert stored.source == "internal"
    assert stored.position > 0
    assert isinstance(stored, Event)


def test_publish_an_event_object_and_a_batch_with_one_key(service: Service) -> None:
    name = _name()
    key = f"batch-{uuid.uuid4().hex}"
    batch: list[Any] = [
        Event(event_name=name, user_id="u1", payload={"n": 1}),
        {"event_name": name, "user_id": "u2", "payload": {"n": 2}},
    ]
    with Client(service.url, service.key) as client:
        first = client.publish(batch, idempotency_key=key)
        again = client.publish(batch, idempotency_key=key)
        assert first.ids[0] == batch[0].id  # a caller-chosen id is kept
        assert [e.duplicate for e in first.events] == [False, False]
        assert again.ids == first.ids
        assert again.events == first.events  # a replay is answered what the first was
        assert len(list(client.events(event_name=name))) == 2
        with pytest.raises(ClientError) as conflict:
            client.publish([{"event_name": name, "payload": {"n": 3}}], idempotency_key=key)
    assert conflict.value.status == 409
    assert conflict.value.code == "idempotency_conflict"


def test_publish_retries_a_503_with_the_same_idempotency_key(service: Service) -> None:
    name = _name()
    seen = Seen()
    with Client(service.url, service.key) as warm:
        list(warm.events(limit=1))  # the key's last-used time is written now, not under the lock
    lock = StoreWriteLock(service.db)

    def release_on_503(response: httpx.Response) -> None:
        if response.status_code == 503:
            lock.release()

    try:
        with (
            _hooked(seen, release_on_503) as http,
            Client(service.url, service.key, retry=FAST, http=http) as client,
        ):
            result = client.publish(name, {"n": 1})
            stored = list(client.events(event_name=name))
    finally:
        lock.release()
    publishes = [r for r in seen.requests if r[:2] == ("POST", "/v1/events")]
    assert seen.statuses[0] == 503
    assert len(publishes) >= 2
    assert len({key for _, _, key in publishes}) == 1  # the same key on every attempt
    assert [e.id for e in stored] == result.ids  # stored once


def test_a_4xx_is_raised_at_once_with_the_service_error_body(service: Service) -> None:
    seen = Seen()
    with _hooked(seen) as http, Client(service.url, service.key, http=http) as client:
        with pytest.raises(ClientError) as invalid:
            client.publish("bad name with spaces", {})
        assert len(seen.requests) == 1  # never retried
        with pytest.raises(ClientError) as missing:
            client.event("evt_does_not_exist")
    assert invalid.value.status == 422
    assert invalid.value.code == "validation_failed"
    assert invalid.value.details
    assert invalid.value.details[0]["field"] == "event_name"
    assert missing.value.status == 404
    assert missing.value.code == "not_found"
    assert "evt_does_not_exist" in missing.value.message

    with Client(service.url, "em_0000_wrong") as anonymous, pytest.raises(ClientError) as denied:
        anonymous.publish(_name())
    assert (denied.value.status, denied.value.code) == (401, "unauthorized")
    assert "em_0000_wrong" not in str(denied.value)

    with Client(service.url, service.read_key) as reader, pytest.raises(ClientError) as scope:
        reader.publish(_name())
    assert scope.value.status == 403


def test_events_fetches_pages_only_as_they_are_consumed(service: Service) -> None:
    name = _name()
    seen = Seen()
    with Client(service.url, service.key) as client:
        ids = client.publish(
            [{"event_name": name, "user_id": f"u{i % 2}", "payload": {"i": i}} for i in range(25)]
        ).ids
    with _hooked(seen) as http, Client(service.url, service.key, http=http) as client:
        first = list(itertools.islice(client.events(event_name=name, page_size=10), 5))
        assert len(seen.requests) == 1
        every = list(client.events(event_name=name, page_size=10))
        assert len(seen.requests) == 1 + 3
        limited = list(client.events(event_name=name, page_size=10, limit=12))
        assert len(seen.requests) == 1 + 3 + 2
        newest = next(client.events(event_name=name, order="desc"))
        only_u1 = list(client.events(event_name=name, user_id="u1"))
        pages = list(client.event_pages(event_name=name, page_size=10))
        resumed = list(client.event_pages(event_name=name, cursor=pages[0].next_cursor))
        later = list(client.events(event_name=name, since=datetime.now(UTC) + timedelta(hours=1)))
    assert [e.id for e in first] == ids[:5]
    assert [e.id for e in every] == ids
    assert [e.position for e in every] == sorted(e.position for e in every)
    assert [e.id for e in limited] == ids[:12]
    assert newest.id == ids[-1]
    assert [e.id for e in only_u1] == ids[1::2]
    assert [len(p.events) for p in pages] == [10, 10, 5]
    assert [e.id for p in resumed for e in p.events] == ids[10:]
    assert later == []


def test_a_service_that_comes_up_late_is_reached_by_retrying(tmp_path: Path) -> None:
    svc = _start_service(tmp_path, port=free_port())
    seen = Seen()
    results: list[Any] = []
    patient = RetryPolicy(attempts=200, initial_backoff=0.05, max_backoff=0.2)

    def publish() -> None:
        with _hooked(seen) as http, Client(svc.url, svc.key, retry=patient, http=http) as client:
            try:
                results.append(client.publish(_name(), {"late": True}))
            except ClientError as exc:
                results.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        while not seen.requests:  # the first attempt found nothing listening
            thread.join(0.01)
        svc.server.start()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        svc.server.stop()
        thread.join(60)
    [result] = results
    assert not isinstance(result, ClientError), result
    assert len(seen.requests) >= 2
    assert seen.statuses == [200]  # every earlier attempt had no answer


# -- the asyncio client -----------------------------------------------------------------------


async def test_async_publish_read_and_iterate(service: Service) -> None:
    name = _name()
    async with AsyncClient(service.url, service.key) as client:
        result = await client.publish([{"event_name": name, "payload": {"i": i}} for i in range(7)])
        one = await client.event(result.ids[3])
        every = [e.id async for e in client.events(event_name=name, page_size=3)]
        two = [e.id async for e in client.events(event_name=name, limit=2)]
        with pytest.raises(ClientError) as missing:
            await client.event("evt_missing_async")
        assert await client.ready()
        assert (await client.health())["status"] == "ok"
    assert one.payload == {"i": 3}
    assert every == result.ids
    assert two == result.ids[:2]
    assert missing.value.status == 404


async def test_async_publish_retries_a_503_with_the_same_idempotency_key(
    service: Service,
) -> None:
    name = _name()
    seen = Seen()
    async with AsyncClient(service.url, service.key) as warm:
        [_ async for _ in warm.events(limit=1)]
    lock = StoreWriteLock(service.db)

    def release_on_503(response: httpx.Response) -> None:
        if response.status_code == 503:
            lock.release()

    try:
        async with (
            _async_hooked(seen, release_on_503) as http,
            AsyncClient(service.url, service.key, retry=FAST, http=http) as client,
        ):
            result = await client.publish(name, {"n": 1}, idempotency_key="async-key-1")
            stored = [e async for e in client.events(event_name=name)]
    finally:
        lock.release()
    assert seen.statuses[0] == 503
    assert len(seen.requests) >= 3  # >= 2 publishes, then the read
    assert {key for _, path, key in seen.requests if path == "/v1/events" and key} == {
        "async-key-1"
    }
    assert [e.id for e in stored] == result.ids


async def test_async_connection_errors_are_bounded() -> None:
    seen = Seen()
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=4, initial_backoff=0.01)
    async with (
        _async_hooked(seen) as http,
        AsyncClient(url, "em_x_y", retry=policy, http=http) as client,
    ):
        with pytest.raises(ClientConnectionError):
            await client.event("evt_1")
        assert not await client.ready()
    assert len(seen.requests) == 4 + 1  # four attempts, then one readiness probe


# -- the delivery API (issue 11) ------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1 answering 200, recording each ``webhook-id``."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        seen = self.ids

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                seen.append(self.headers.get("webhook-id", ""))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


def _until(condition: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def delivery_service(tmp_path: Path) -> Iterator[Service]:
    if importlib.util.find_spec("eventmill.delivery") is None:
        pytest.skip("this build has no /v1/endpoints or /v1/deliveries (issue 11 not merged)")
    svc = _start_service(
        tmp_path,
        EVENTMILL_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]',
        EVENTMILL_DELIVERY__RETRY_SCHEDULE="[0.2, 0.5]",
        EVENTMILL_DELIVERY__POLL_INTERVAL_SECONDS="0.1",
    )
    svc.key = asyncio.run(_create_key(f"sqlite:///{svc.db}", "admin"))
    svc.server.start()
    try:
        yield svc
    finally:
        svc.server.stop()


def test_endpoints_and_deliveries(delivery_service: Service) -> None:
    receiver = Receiver()
    user = f"user_{uuid.uuid4().hex[:8]}"
    try:
        with Client(delivery_service.url, delivery_service.key) as client:
            created = client.create_endpoint(
                receiver.url, user_id=user, event_types=["client.test.*"], description="mine"
            )
            assert created.secret is not None
            assert created.secret.startswith("whsec_")
            assert client.endpoint(created.id).secret is None  # shown once
            assert [e.id for e in client.endpoints(user_id=user)] == [created.id]

            [event_id] = client.publish(_name(), {"n": 1}, user_id=user).ids
            [delivery] = _until(
                lambda: [
                    d for d in client.deliveries(endpoint_id=created.id) if d.status == "succeeded"
                ]
            )
            assert delivery.event_id == event_id
            detail = client.delivery(delivery.id)
            assert detail.history is not None
            assert [a.status_code for a in detail.history] == [200]
            assert receiver.ids == [delivery.id]  # webhook-id: the delivery's id

            again = client.retry_delivery(delivery.id)
            assert again.status == "pending"
            _until(lambda: len(receiver.ids) == 2)
            assert receiver.ids == [delivery.id, delivery.id]

            changed = client.update_endpoint(created.id, description="changed", disabled=True)
            assert (changed.description, changed.disabled) == ("changed", True)
            assert [e.id for e in client.endpoints(user_id=user, disabled=True)] == [created.id]
            rotated = client.rotate_endpoint_secret(created.id, overlap_seconds=60)
            assert rotated.secret.startswith("whsec_")
            assert rotated.secret != created.secret
            assert rotated.previous_secret_expires_at is not None
            since = datetime.now(UTC) - timedelta(hours=1)
            with pytest.raises(ClientError) as disabled:  # nothing would be sent
                client.recover_endpoint(created.id, since=since)
            assert (disabled.value.status, disabled.value.code) == (409, "endpoint_disabled")
            client.update_endpoint(created.id, disabled=False)
            assert client.recover_endpoint(created.id, since=since) == 0  # none failed
            client.delete_endpoint(created.id)
            with pytest.raises(ClientError) as gone:
                client.endpoint(created.id)
            assert gone.value.status == 404
    finally:
        receiver.close()


async def test_async_endpoints(delivery_service: Service) -> None:
    user = f"user_{uuid.uuid4().hex[:8]}"
    async with AsyncClient(delivery_service.url, delivery_service.key) as client:
        created = await client.create_endpoint("http://127.0.0.1:9/hook", user_id=user)
        listed = [e.id async for e in client.endpoints(user_id=user)]
        assert listed == [created.id]
        assert [d async for d in client.deliveries(endpoint_id=created.id)] == []
        with pytest.raises(ClientError) as invalid:
            await client.create_endpoint("ftp://127.0.0.1/x", user_id=user)
        assert invalid.value.status == 422
        await client.delete_endpoint(created.id)
