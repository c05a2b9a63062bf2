"""The bounded per-connection buffer over real sockets: a client that stops reading is
closed as a slow consumer (4008) while another client on the node gets every event on
time; it then resumes from the last position it saw. One that never reads again is
dropped after the grace period."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from eventmill.realtime import CloseCode
from tests.realtime.support import (
    Node,
    embedded_node,
    event,
    token,
    ws_client,
)

pytestmark = pytest.mark.slow

BLOB = "x" * 64_000
"""Events of ~64 KB: a few hundred fill the socket buffers of a client that stops."""
EVENTS = 160
ON_TIME = 2.0
"""The bound: every event reaches the reading client within 2 s of its ingest being
answered, however far behind the stopped client is (on a shared 2-core machine; a hub
that waited for the slow client would hold it until that client reads again)."""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with embedded_node(
        tmp_path_factory.mktemp("realtime-slow"),
        EVENTMILL_REALTIME__MAX_PENDING_MESSAGES="20",
        EVENTMILL_REALTIME__CLOSE_GRACE_SECONDS="3",
    ) as node:
        yield node


class StalledClient:
    """A WebSocket client on a raw socket with a small receive buffer (no autotuning)
    that reads nothing until told to: the socket buffers fill, the server's writes
    stop. (A client library keeps reading into its own buffers; this one does not.)"""

    def __init__(self, url: str) -> None:
        self.url = url
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.setblocking(False)
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        uri = parse_uri(self.url)
        await loop.sock_connect(self.sock, (uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        await loop.sock_sendall(self.sock, b"".join(self.protocol.data_to_send()))
        async with asyncio.timeout(30):
            while not any(isinstance(e, Response) for e in self._feed(await self._recv())):
                pass

    async def _recv(self) -> bytes:
        return await asyncio.get_running_loop().sock_recv(self.sock, 65536)

    def _feed(self, data: bytes) -> list[Any]:
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        for e in events:
            if isinstance(e, Frame) and e.opcode is Opcode.TEXT:
                self.messages.append(orjson.loads(e.data))
            elif isinstance(e, Frame) and e.opcode is Opcode.CLOSE:
                close = Close.parse(e.data)
                self.close_code, self.close_reason = close.code, close.reason
        return events

    async def read_until_closed(self) -> None:
        """Read everything the server sent, up to its close frame or the socket's end
        (a dropped connection: ``close_code`` stays ``None``)."""
        async with asyncio.timeout(60):
            while self.close_code is None:
                try:
                    data = await self._recv()
                except ConnectionError:
                    return
                self._feed(data)
                if not data:
                    return

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "event"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def stalled(node: Node) -> AsyncIterator[tuple[str, StalledClient]]:
    """A client of a new user that reads nothing until the test says so."""
    user = f"slow_{uuid.uuid4().hex[:8]}"
    client = StalledClient(f"{node.ws_url}?token={token(user)}")
    await client.connect()
    try:
        yield user, client
    finally:
        client.close()


async def _flood(node: Node, user: str) -> dict[str, float]:
    """Ingest EVENTS big events for ``user``; return id → when its ingest was answered."""
    answered: dict[str, float] = {}
    for _ in range(EVENTS // 10):
        ids = await node.publish(*(event(user, "test.big", blob=BLOB) for _ in range(10)))
        now = time.monotonic()
        answered.update(dict.fromkeys(ids, now))
    return answered


async def test_a_client_that_stops_reading_is_closed_and_others_stay_on_time(
    node: Node, stalled: tuple[str, StalledClient]
) -> None:
    user, slow = stalled
    async with ws_client(f"{node.ws_url}?token={token(user)}") as fast:
        await fast.wait_for(lambda c: c.of("connected"))
        answered = await _flood(node, user)
        await fast.wait_for(lambda c: set(answered) <= set(c.received_at), timeout=120)
        late = {i: fast.received_at[i] - answered[i] for i in answered}
        assert max(late.values()) < ON_TIME, sorted(late.values())[-5:]
        assert [e["id"] for e in fast.events()] == list(answered)

    # the stopped client now reads: what was on its way, then the close
    await slow.read_until_closed()
    assert (slow.close_code, slow.close_reason) == (CloseCode.SLOW_CONSUMER, "slow_consumer")
    got = [m["payload"]["id"] for m in slow.events()]
    assert 0 < len(got) < EVENTS
    assert got == list(answered)[: len(got)]  # a prefix, in order

    # and it resumes from the last position it saw: the rest, exactly
    last = slow.events()[-1]["position"]
    async with ws_client(f"{node.ws_url}?token={token(user)}&since={last}") as again:
        await again.wait_for(lambda c: c.of("resumed"))
        assert [e["id"] for e in again.events()] == list(answered)[len(got) :]


async def test_a_client_that_never_reads_again_is_dropped(
    node: Node, stalled: tuple[str, StalledClient]
) -> None:
    user, slow = stalled
    async with ws_client(f"{node.ws_url}?token={token(user)}") as fast:
        answered = await _flood(node, user)
        await fast.wait_for(lambda c: set(answered) <= set(c.received_at), timeout=120)
    # past the close grace (3 s) the server gives up on the close handshake and drops
    # the connection: reading now ends in an abnormal closure, without the close frame
    await asyncio.sleep(4)
    await slow.read_until_closed()
    assert slow.close_code is None
    assert len(slow.events()) < EVENTS
