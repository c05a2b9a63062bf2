"""Multi-node: two ``eventmill serve`` processes on one real broker (Redis, NATS, Kafka)
with a shared PostgreSQL store. A WebSocket client on one node receives the events
ingested on the other: every hub subscribes to the events topic without a group (the
bus's ephemeral fan-out) and reads the shared store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.brokers import broker_bus_url
from tests.ingest.support import pg_store_url
from tests.pubsub._kafka_server import TansuServer, tansu_server
from tests.realtime.support import WsClient, create_key, event, running_node, token, ws_client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuServer]:
    with tansu_server() as server:
        yield server


@pytest.fixture(params=["redis", "nats", "kafka"])
async def bus_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A bus URL on the real broker, with names of its own (removed afterwards)."""
    tansu = request.getfixturevalue("tansu") if request.param == "kafka" else None
    async with broker_bus_url(request.param, tansu=tansu) as url:
        yield url


@pytest.fixture
def pg_store() -> Iterator[str]:
    with pg_store_url() as url:
        yield url


def _ids(client: WsClient) -> list[str]:
    return [e["id"] for e in client.events()]


async def test_a_client_on_node_b_gets_events_ingested_on_node_a(
    tmp_path: Path, pg_store: str, bus_url: str
) -> None:
    key = await create_key(pg_store)
    alice, bob = f"alice_{uuid.uuid4().hex[:6]}", f"bob_{uuid.uuid4().hex[:6]}"
    # The hubs read the store every 60 s at most on their own: within the waits below,
    # only the bus's fan-out can wake node B for node A's events.
    slow_poll = {"EVENTMILL_REALTIME__POLL_INTERVAL_SECONDS": "60"}
    with (
        running_node(tmp_path / "a", pg_store, bus_url, key, **slow_poll) as node_a,
        running_node(tmp_path / "b", pg_store, bus_url, key, **slow_poll) as node_b,
    ):
        async with (
            ws_client(f"{node_b.ws_url}?token={token(alice)}") as on_b,
            ws_client(f"{node_a.ws_url}?token={token(bob)}") as on_a,
        ):
            await on_b.wait_for(lambda c: c.of("connected"))
            await on_a.wait_for(lambda c: c.of("connected"))
            from_a = await node_a.publish(
                event(alice, "test.from_a", n=1),
                event(bob, "test.from_a"),
                event(alice, "test.from_a", n=2),
            )
            from_b = await node_b.publish(event(bob, "test.from_b"), event(alice, "test.from_b"))
            await on_b.wait_for(lambda c: len(_ids(c)) >= 3, timeout=30)
            await on_a.wait_for(lambda c: len(_ids(c)) >= 2, timeout=30)
            assert _ids(on_b) == [from_a[0], from_a[2], from_b[1]]  # alice's, in store order
            assert _ids(on_a) == [from_a[1], from_b[0]]  # bob's, across both nodes
