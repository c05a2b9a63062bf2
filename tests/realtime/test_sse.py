"""``/sse`` over real sockets: the stream's format and headers, filters, keep-alive,
and resume with ``Last-Event-ID`` (exactly the missed events, in order, then live)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.realtime.support import (
    Node,
    SseClient,
    create_key,
    event,
    running_node,
    sse_client,
    token,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realtime-sse") / "events.db"


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
        EVENTMILL_REALTIME__HEARTBEAT_SECONDS="1",
        EVENTMILL_REALTIME__RESUME_MAX_EVENTS="500",
    ) as node:
        yield node


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:8]}"


def _ids(client: SseClient) -> list[str]:
    return [e["id"] for e in client.data() if "event_name" in e]


async def test_stream_format_headers_and_filters(node: Node) -> None:
    alice = _user()
    async with sse_client(node.url, token=token(alice), events="account.*,order.paid") as stream:
        headers = stream.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["x-accel-buffering"] == "no"
        assert headers["cache-control"] == "no-cache"
        await stream.wait_for(lambda s: s.events)
        opening = stream.events[0]
        assert opening["retry"] == "2000"
        assert opening["id"].isdigit()  # the live start position
        assert "data" not in opening
        ids = await node.publish(
            event(alice, "account.opened"),
            event(alice, "order.created"),
            event(alice, "order.paid"),
        )
        await stream.wait_for(lambda s: len(_ids(s)) == 2)
        blocks = [b for b in stream.events if "data" in b]
        assert [b["event"] for b in blocks] == ["account.opened", "order.paid"]
        assert [e["id"] for e in stream.data()] == [ids[0], ids[2]]
        positions = [int(b["id"]) for b in blocks]
        assert positions == sorted(positions)
        assert positions[0] > int(opening["id"])
        assert stream.data()[0]["user_id"] == alice


async def test_keep_alive_comment_carries_the_position(node: Node) -> None:
    async with sse_client(node.url, token=token(_user())) as stream:
        await stream.wait_for(lambda s: "keep-alive" in s.comments, timeout=10)
        await stream.wait_for(lambda s: len(s.events) >= 2, timeout=10)
        assert all("data" not in b and b["id"].isdigit() for b in stream.events)


async def test_resume_with_last_event_id_gets_exactly_the_missed_events_then_live(
    node: Node,
) -> None:
    alice, bob = _user(), _user()
    async with sse_client(node.url, token=token(alice)) as stream:
        [first] = await node.publish(event(alice, "test.before"))
        await stream.wait_for(lambda s: _ids(s) == [first])
        last_id = stream.last_id()
    assert last_id is not None
    # while the client is away: 100 of its events, and others' between them
    missed: list[str] = []
    for i in range(0, 100, 10):
        batch = []
        for j in range(i, i + 10):
            batch += [event(alice, "test.missed", n=j), event(bob, "test.other", n=j)]
        missed += (await node.publish(*batch))[0::2]
    assert len(missed) == 100

    during: list[str] = []

    async def publish_during_reconnect() -> None:
        for n in range(30):  # crosses the seam between replay and live
            during.extend(await node.publish(event(alice, "test.during", n=n)))

    publisher = asyncio.create_task(publish_during_reconnect())
    headers = {"Last-Event-ID": last_id}
    async with sse_client(node.url, token=token(alice), headers=headers) as stream:
        await publisher
        live = await node.publish(event(alice, "test.live"), event(alice, "test.live"))
        expected = missed + during + live
        await stream.wait_for(lambda s: len(_ids(s)) >= len(expected))
        assert _ids(stream) == expected  # every missed one, in order, no duplicate
        positions = [int(b["id"]) for b in stream.events if "data" in b]
        assert positions == sorted(set(positions))


async def test_resume_from_a_position_whose_events_are_gone_says_so_then_goes_live(
    node: Node, store_file: Path
) -> None:
    alice = _user()
    ids = await node.publish(*(event(alice, "test.old", n=n) for n in range(3)))
    async with sse_client(node.url, token=token(alice)) as stream:
        await stream.wait_for(lambda s: s.events)
        start = int(stream.events[0]["id"])
    # retention deletes the oldest events, including the first one after `start - 3`
    with sqlite3.connect(store_file) as db:
        db.execute("DELETE FROM events WHERE position <= ?", (start - 1,))
    assert ids  # (the events just deleted)
    headers = {"Last-Event-ID": str(start - 3)}
    async with sse_client(node.url, token=token(alice), headers=headers) as stream:
        await stream.wait_for(lambda s: s.data("resume_failed"))
        [failed] = stream.data("resume_failed")
        assert failed["error"] == "resume_gap_too_old"
        assert failed["oldest_position"] > start - 3
        assert _ids(stream) == []  # nothing of the gap was replayed
        [live] = await node.publish(event(alice, "test.after"))
        await stream.wait_for(lambda s: _ids(s) == [live])
        blocks = [b for b in stream.events if b.get("event") == "resume_failed"]
        assert int(blocks[0]["id"]) >= start  # Last-Event-ID moves past the gap


@pytest.mark.parametrize("value", ["-3", "abc", "1.5", "²", "٣"])
async def test_a_bad_last_event_id_or_since_is_a_400_naming_it(node: Node, value: str) -> None:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        by_header = await http.get(
            "/sse",
            params={"token": token(_user())},
            headers={"Last-Event-ID": value.encode()},  # as raw UTF-8 bytes
        )
        by_query = await http.get("/sse", params={"token": token(_user()), "since": value})
    for response, name in ((by_header, "Last-Event-ID"), (by_query, "since")):
        assert response.status_code == 400, response.text
        assert name in response.json()["message"]


async def test_a_last_event_id_past_the_newest_says_so(node: Node) -> None:
    """However long the number: past any store's head is "unknown", not a 400 (which
    would stop a browser's EventSource for good)."""
    for value in ("9" * 19, "1" + "0" * 30):
        headers = {"Last-Event-ID": value}
        async with sse_client(node.url, token=token(_user()), headers=headers) as stream:
            await stream.wait_for(lambda s: s.data("resume_failed"))
            assert stream.data("resume_failed")[0]["error"] == "resume_position_unknown"


async def test_resume_with_too_many_missed_events_says_so(node: Node) -> None:
    alice = _user()
    async with sse_client(node.url, token=token(alice)) as stream:
        await stream.wait_for(lambda s: s.events)
        start = stream.events[0]["id"]
    for _ in range(6):  # 600 missed events > resume_max_events (500)
        await node.publish(*(event(alice, "test.flood") for _ in range(100)))
    async with sse_client(node.url, token=token(alice), since=start) as stream:
        await stream.wait_for(lambda s: s.data("resume_failed"))
        assert stream.data("resume_failed")[0]["error"] == "resume_gap_too_old"
        assert _ids(stream) == []


def test_every_message_of_the_stream_itself_is_a_name_no_event_may_take() -> None:
    from eventmill.realtime.sse import _ENDINGS
    from eventmill.web.seam import STREAM_CONTROL_NAMES

    browsers_own = {"error", "open", "message"}  # EventSource's event types
    assert {*_ENDINGS.values(), "resume_failed", *browsers_own} == STREAM_CONTROL_NAMES
