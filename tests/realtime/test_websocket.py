"""``/ws`` over real sockets against ``eventmill serve``: per-user delivery, the message
format, subscriptions, ping/pong."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from eventmill.realtime import CloseCode
from tests.realtime.support import (
    Node,
    WsClient,
    admin_token,
    close_code,
    embedded_node,
    event,
    token,
    ws_client,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with embedded_node(
        tmp_path_factory.mktemp("realtime-ws"),
        EVENTMILL_REALTIME__HEARTBEAT_SECONDS="1",
        EVENTMILL_REALTIME__MAX_CONNECTIONS_PER_USER="3",
    ) as node:
        yield node


def _users() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"alice_{tag}", f"bob_{tag}"


def _connected(client: WsClient) -> bool:
    return bool(client.of("connected"))


async def test_two_users_with_two_connections_each_get_exactly_their_own_events(
    node: Node,
) -> None:
    alice, bob = _users()
    async with (
        ws_client(f"{node.ws_url}?token={token(alice)}") as a1,
        ws_client(f"{node.ws_url}?token={token(alice)}") as a2,
        ws_client(f"{node.ws_url}?token={token(bob)}") as b1,
        ws_client(f"{node.ws_url}?token={token(bob)}") as b2,
    ):
        for client in (a1, a2, b1, b2):
            await client.wait_for(_connected)
        bodies = []
        for i in range(10):
            bodies.append(event(alice, "test.alice", i=i))
            bodies.append(event(bob, "test.bob", i=i))
            bodies.append(event(None, "test.nobody", i=i))
        ids = await node.publish(*bodies)
        alice_ids = ids[0::3]
        bob_ids = ids[1::3]
        # a last event per user: everything before it has been delivered
        [a_last] = await node.publish(event(alice, "test.last"))
        [b_last] = await node.publish(event(bob, "test.last"))
        for client, last in ((a1, a_last), (a2, a_last), (b1, b_last), (b2, b_last)):
            await client.wait_for(lambda c, last=last: any(e["id"] == last for e in c.events()))
        for client in (a1, a2):
            assert [e["id"] for e in client.events()] == [*alice_ids, a_last]
            assert {e["user_id"] for e in client.events()} == {alice}
        for client in (b1, b2):
            assert [e["id"] for e in client.events()] == [*bob_ids, b_last]
            assert {e["user_id"] for e in client.events()} == {bob}


async def test_message_format_is_the_system_descriptions(node: Node) -> None:
    alice, _ = _users()
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        await client.wait_for(_connected)
        [hello] = client.of("connected")
        assert hello["user_id"] == alice
        assert hello["events"] == ["*"]
        assert isinstance(hello["position"], int)
        [event_id] = await node.publish(event(alice, "user.profile.updated", name="Alice"))
        await client.wait_for(lambda c: c.events())
        [message] = client.of("event")
        assert message["type"] == "event"
        assert message["position"] > hello["position"]
        payload = message["payload"]
        assert payload["id"] == event_id
        assert payload["event_name"] == "user.profile.updated"
        assert payload["source"] == "tests"
        assert payload["user_id"] == alice
        assert payload["payload"] == {"name": "Alice"}
        assert set(payload) == {
            "id",
            "event_name",
            "source",
            "user_id",
            "payload",
            "metadata",
            "created_at",
            "processed_at",
        }
        assert payload["created_at"].endswith("Z")


async def test_operator_token_gets_every_users_events_and_those_without_a_user(
    node: Node,
) -> None:
    alice, bob = _users()
    async with ws_client(f"{node.ws_url}?token={admin_token()}") as ops:
        await ops.wait_for(_connected)
        assert ops.of("connected")[0]["all_users"] is True
        ids = await node.publish(event(alice), event(bob), event(None, "system.tick"))
        await ops.wait_for(lambda c: ids[-1] in [e["id"] for e in c.events()])
        assert [e["id"] for e in ops.events() if e["id"] in ids] == ids


async def test_subscribe_and_unsubscribe_filter_by_name_pattern(node: Node) -> None:
    alice, _ = _users()
    url = f"{node.ws_url}?token={token(alice)}&events=shop.payment.*"
    async with ws_client(url) as client:
        await client.wait_for(_connected)
        assert client.of("connected")[0]["events"] == ["shop.payment.*"]
        await client.send({"type": "subscribe", "events": ["user.*"], "id": "s1"})
        await client.wait_for(lambda c: c.of("subscribed"))
        assert client.of("subscribed")[0] == {
            "type": "subscribed",
            "events": ["shop.payment.*", "user.*"],
            "id": "s1",
        }
        await node.publish(
            event(alice, "user.profile.updated"),
            event(alice, "order.created"),
            event(alice, "shop.payment.captured"),
        )
        await client.wait_for(lambda c: len(c.events()) == 2)
        await client.send({"type": "unsubscribe", "events": ["user.*"]})
        await client.wait_for(lambda c: c.of("unsubscribed"))
        await node.publish(
            event(alice, "user.profile.updated"), event(alice, "shop.payment.failed")
        )
        await client.wait_for(lambda c: len(c.events()) == 3)
        assert [e["event_name"] for e in client.events()] == [
            "user.profile.updated",
            "shop.payment.captured",
            "shop.payment.failed",
        ]


async def test_ping_pong_and_bad_messages_get_replies(node: Node) -> None:
    alice, _ = _users()
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        await client.send({"type": "ping", "id": 7})
        await client.wait_for(lambda c: c.of("pong"))
        assert client.of("pong") == [{"type": "pong", "id": 7}]
        await client.ws.send("not json")
        await client.send({"type": "subscribe", "events": ["bad pattern!"]})
        await client.send({"type": "dance"})
        await client.send({"type": "subscribe"})  # neither patterns nor a position
        await client.send({"type": "unsubscribe", "events": None})
        await client.send({"type": "ping", "id": {"a": 1}})
        await client.wait_for(lambda c: len(c.of("error")) == 6)
        assert [(e["error"], e["message"]) for e in client.of("error")] == [
            ("invalid_message", "messages must be JSON objects"),
            ("invalid_pattern", client.of("error")[1]["message"]),
            ("unknown_type", client.of("error")[2]["message"]),
            ("invalid_message", "'subscribe' needs 'events' (patterns) or 'since'"),
            ("invalid_message", "'events' must be a list of patterns"),
            ("invalid_message", "'id' must be a string or an integer"),
        ]
        assert client.of("pong") == [{"type": "pong", "id": 7}]
        assert client.closed is None  # a bad message does not end the connection


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "ping", "id": "' + "\u00e9" * 8200 + '"}',  # 8,2k characters, 16.4 kB
        '{"type": "ping", "id": "' + "x" * 4_000_000 + '"}',  # refused while it arrives
    ],
    ids=["bytes-not-characters", "megabytes"],
)
async def test_a_client_message_over_the_limit_in_bytes_is_closed_1009(
    node: Node, message: str
) -> None:
    """``max_client_message_bytes`` (16 KiB) counts UTF-8 bytes, and the protocol
    enforces it as the message arrives (uvicorn's own limit was 16 MiB)."""
    alice, _ = _users()
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        with contextlib.suppress(ConnectionClosed):  # the server may close mid-send
            await client.ws.send(message)
        await client.wait_for(lambda c: c.closed is not None)
        assert client.closed is not None
        code = client.closed.rcvd.code if client.closed.rcvd else None
        assert code == 1009, client.closed
        assert client.of("pong") == []


async def test_heartbeats_carry_the_position_everything_before_them_was_sent(node: Node) -> None:
    alice, _ = _users()
    async with ws_client(f"{node.ws_url}?token={token(alice)}") as client:
        [event_id] = await node.publish(event(alice, "test.before_heartbeat"))
        await client.wait_for(lambda c: c.events())
        position = client.of("event")[0]["position"]
        await client.wait_for(
            lambda c: any(h["position"] >= position for h in c.of("heartbeat")), timeout=10
        )
        kinds = [m["type"] for m in client.messages]
        before = client.messages[: kinds.index("event")]
        assert all(m.get("position", -1) < position for m in before if m["type"] == "heartbeat")
        assert client.events()[0]["id"] == event_id


async def test_a_connection_that_keeps_getting_events_gets_no_heartbeat(node: Node) -> None:
    """Heartbeats go to idle connections: one that got a message since the last round is
    alive to its client already (a heartbeat round over 10,000 busy connections would
    be 10,000 more writes in the middle of their events)."""
    alice, bob = _users()
    async with (
        ws_client(f"{node.ws_url}?token={token(alice)}") as busy,
        ws_client(f"{node.ws_url}?token={token(bob)}") as idle,
    ):
        await busy.wait_for(_connected)
        await idle.wait_for(_connected)
        await node.publish(event(alice, "test.busy"))
        await busy.wait_for(lambda c: c.events())
        beats, idle_beats = len(busy.of("heartbeat")), len(idle.of("heartbeat"))
        async with asyncio.timeout(60):
            while len(idle.of("heartbeat")) < idle_beats + 3:  # 3 rounds (1 s apart here)
                before = len(busy.events())
                await node.publish(event(alice, "test.busy"))
                await busy.wait_for(lambda c, n=before: len(c.events()) > n)
        # one at most: a stall of a second between two events would let a round in
        assert len(busy.of("heartbeat")) - beats <= 1
        assert busy.closed is None


async def test_a_user_holds_at_most_max_connections_per_user(node: Node) -> None:
    alice, _ = _users()
    url = f"{node.ws_url}?token={token(alice)}"
    async with ws_client(url) as a, ws_client(url) as b, ws_client(url) as c:
        for client in (a, b, c):
            await client.wait_for(_connected)
        async with ws_client(url) as fourth:
            closed = await fourth.wait_closed()
        assert close_code(closed) == CloseCode.TOO_MANY_CONNECTIONS
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
            response = await http.get("/sse", params={"token": token(alice)})
        assert response.status_code == 429
        assert response.json()["error"] == "limit"
    # once they are closed, the user may connect again
    async with ws_client(url) as again:
        await again.wait_for(_connected)


async def test_plain_http_on_the_websocket_route_is_426_saying_what_it_is(node: Node) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{node.url}/ws", params={"token": token("alice")})
    assert answer.status_code == 426, answer.text
    assert answer.json()["error"] == "upgrade_required"
    assert "WebSocket" in answer.json()["message"]
    assert answer.headers["upgrade"] == "websocket"
