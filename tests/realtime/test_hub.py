"""The hub over real sockets: WebSocket resume with ``since`` (exactly the missed events,
in order, then live, with no gap or duplicate at the seam), and the explicit answer
when the gap cannot be covered."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventmill import open_pubsub
from eventmill.events import Event
from eventmill.realtime import CloseCode
from tests.realtime.support import (
    Node,
    WsClient,
    close_code,
    close_reason,
    create_key,
    event,
    running_node,
    token,
    ws_client,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realtime-hub") / "events.db"


@pytest.fixture(scope="module")
def node(store_file: Path) -> Iterator[Node]:
    tmp = store_file.parent
    store_url = f"sqlite:///{store_file}"
    key = asyncio.run(create_key(store_url))
    with running_node(
        tmp,
        store_url,
        f"sqlite:///{tmp / 'bus.db'}",
        key,
        EVENTMILL_REALTIME__RESUME_MAX_EVENTS="500",
    ) as node:
        yield node


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


def _ids(client: WsClient) -> list[str]:
    return [e["id"] for e in client.events()]


async def _missed_while_away(node: Node, alice: str) -> tuple[int, list[str]]:
    """Connect, see one event, disconnect; 100 events of alice's (and others') are
    ingested meanwhile. Returns the last position seen and the missed ids."""
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        [first] = await node.publish(event(alice, "test.before"))
        await client.wait_for(lambda c: _ids(c) == [first])
        last = client.of("event")[-1]["position"]
    missed: list[str] = []
    for i in range(0, 100, 20):
        batch = []
        for j in range(i, i + 20):
            batch += [event(alice, "test.missed", n=j), event(_user(), "test.other")]
        missed += (await node.publish(*batch))[0::2]
    return last, missed


async def test_resume_with_since_gets_exactly_the_missed_events_then_live(node: Node) -> None:
    alice = _user()
    last, missed = await _missed_while_away(node, alice)
    during: list[str] = []

    async def publish_during_reconnect() -> None:
        for n in range(30):
            during.extend(await node.publish(event(alice, "test.during", n=n)))

    publisher = asyncio.create_task(publish_during_reconnect())
    async with ws_client(f"{node.ws_url}?token={token(alice)}&since={last}") as client:
        await publisher
        live = await node.publish(event(alice, "test.live"), event(alice, "test.live"))
        expected = missed + during + live
        await client.wait_for(lambda c: len(_ids(c)) >= len(expected))
        assert _ids(client) == expected
        positions = [m["position"] for m in client.of("event")]
        assert positions == sorted(set(positions))
        # the seam is marked: replayed events come before "resumed", live ones after
        kinds = [m["type"] for m in client.messages if m["type"] in ("event", "resumed")]
        [resumed] = client.of("resumed")
        assert resumed["since"] == last
        assert kinds.index("resumed") == resumed["replayed"] >= 100
        assert "position" not in client.of("connected")[0]


async def test_resume_with_a_subscribe_message_and_a_filter(node: Node) -> None:
    alice = _user()
    last, missed = await _missed_while_away(node, alice)
    [unwanted] = await node.publish(event(alice, "test.unwanted"))
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        await client.send({"type": "subscribe", "events": ["test.missed"], "since": last})
        await client.wait_for(lambda c: c.of("resumed"))
        assert client.of("subscribed")[0]["events"] == ["test.missed"]
        [wanted] = await node.publish(event(alice, "test.missed"))
        await client.wait_for(lambda c: wanted in _ids(c))
        # Until the subscribe, the connection had every event of alice's from the hub's
        # position at connect: test.unwanted arrives then if the hub had not yet seen it
        # (stored just before); after it, exactly the missed ones, then the live one.
        split = next(i for i, m in enumerate(client.messages) if m["type"] == "subscribed")
        before = [m["payload"]["id"] for m in client.messages[:split] if m["type"] == "event"]
        after = [m["payload"]["id"] for m in client.messages[split:] if m["type"] == "event"]
        assert before in ([], [unwanted])
        assert after == [*missed, wanted]


async def test_a_gap_beyond_retention_is_refused_explicitly(node: Node, store_file: Path) -> None:
    alice = _user()
    last, _ = await _missed_while_away(node, alice)
    # retention deletes the oldest events, up to some of those missed
    with sqlite3.connect(store_file) as db:
        db.execute("DELETE FROM events WHERE position <= ?", (last + 10,))
    async with ws_client(f"{node.ws_url}?token={token(alice)}&since={last}") as client:
        closed = await client.wait_closed()
    assert close_code(closed) == CloseCode.RESUME_GAP_TOO_OLD
    assert close_reason(closed) == "resume_gap_too_old"
    [error] = client.of("error")
    assert error["error"] == "resume_gap_too_old"
    assert error["oldest_position"] > last + 1
    assert client.events() == []  # not a part of the gap


async def test_more_missed_events_than_resume_max_events_are_refused(node: Node) -> None:
    alice = _user()
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        await client.wait_for(lambda c: c.of("connected"))
        start = client.of("connected")[0]["position"]
    for _ in range(6):  # 600 > resume_max_events (500)
        await node.publish(*(event(alice, "test.flood") for _ in range(100)))
    async with ws_client(f"{node.ws_url}?token={token(alice)}&since={start}") as client:
        closed = await client.wait_closed()
    assert close_code(closed) == CloseCode.RESUME_GAP_TOO_OLD
    assert client.of("error")[0]["error"] == "resume_gap_too_old"
    assert client.events() == []
    # filtered to what it wants, the same client can resume
    url = f"{node.ws_url}?token={token(alice)}&since={start}&events=test.none"
    async with ws_client(url) as client:
        await client.wait_for(lambda c: c.of("resumed"))
        assert client.of("resumed")[0]["replayed"] == 0


@pytest.mark.parametrize("since", ["999999999999", "9" * 19, "1" + "0" * 30])
async def test_a_position_past_the_newest_is_refused(node: Node, since: str) -> None:
    """However long: past any store's head is "unknown", not a bad request."""
    url = f"{node.ws_url}?token={token(_user())}&since={since}"
    async with ws_client(url) as client:
        closed = await client.wait_closed()
    assert close_code(closed) == CloseCode.RESUME_GAP_TOO_OLD
    assert close_reason(closed) == "resume_position_unknown"


@pytest.mark.parametrize("since", ["-3", "abc", "1.5", "%C2%B2", "%D9%A3"])
async def test_a_bad_since_is_a_bad_request(node: Node, since: str) -> None:
    """Not a position: also digits other than 0-9 ("²", Arabic-Indic "٣")."""
    async with ws_client(f"{node.ws_url}?token={token(_user())}&since={since}") as client:
        closed = await client.wait_closed()
    assert close_code(closed) == CloseCode.BAD_REQUEST
    assert close_reason(closed) == "bad_request"


async def test_an_event_published_straight_to_the_bus_arrives_once_the_audit_stores_it(
    tmp_path: Path,
) -> None:
    """Without a position on the bus, the hub polls the store until the audit handler has
    stored the event (the regular poll is set to 60 s: only that path can deliver it)."""
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}"
    key = await create_key(store_url)
    alice = _user()
    with running_node(
        tmp_path, store_url, bus_url, key, EVENTMILL_REALTIME__POLL_INTERVAL_SECONDS="60"
    ) as node:
        async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
            await client.wait_for(lambda c: c.of("connected"))
            bus = await open_pubsub(bus_url)
            try:
                direct = Event(event_name="test.direct", source="tests", user_id=alice)
                await bus.publish("events", direct.to_message())
            finally:
                await bus.close()
            await client.wait_for(lambda c: _ids(c) == [direct.id], timeout=30)
            assert client.of("event")[0]["position"] > client.of("connected")[0]["position"]


async def test_recent_sends_the_latest_stored_events_of_the_client_then_live(node: Node) -> None:
    alice = _user()
    older = await node.publish(*[event(alice, "test.old", n=n) for n in range(3)])
    others = await node.publish(*[event(_user(), "test.other") for _ in range(3)])
    assert others
    async with ws_client(f"{node.ws_url}?token={token(alice)}&recent=6") as client:
        await client.wait_for(lambda c: c.of("resumed"))
        assert _ids(client) == older  # the last 6 stored, of which alice's three
        [live] = await node.publish(event(alice, "test.live"))
        await client.wait_for(lambda c: live in _ids(c))
        assert _ids(client) == [*older, live]
    async with ws_client(f"{node.ws_url}?token={token(alice)}&recent=x") as client:
        closed = await client.wait_closed()
    assert close_code(closed) == CloseCode.BAD_REQUEST
    [error] = client.of("error")
    assert error["message"] == "recent must be a number of events (a non-negative integer)"
