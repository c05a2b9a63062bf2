"""CorrelationID: taken from the incoming message or created; stamped on results."""

from __future__ import annotations

import asyncio

from eventmill import Message
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import CorrelationID, CorrelationIDConfig, HandlerResult, Router
from eventmill.router.middleware import CORRELATION_ID_KEY, correlation_id
from tests.pubsub.conformance import collect, unique
from tests.router.support import running


async def test_incoming_id_propagates_to_produced_messages(bus: MemoryPubSub) -> None:
    topic, out = unique("t"), unique("out")
    out_sub = await bus.subscribe(out, group="check")
    seen_inside: list[str | None] = []

    async def handle(msg: Message) -> HandlerResult:
        seen_inside.append(correlation_id())
        return [Message(b"a"), Message(b"b", {CORRELATION_ID_KEY: "own"})]

    router = Router(bus, bus)
    router.add_middleware(CorrelationID())
    router.add_handler("h", topic, handle, group="g", publish_topic=out)
    async with running(router):
        await bus.publish(topic, Message(b"in", {CORRELATION_ID_KEY: "req-123"}))
        got = await collect(out_sub, 2)
    assert seen_inside == ["req-123"]
    assert [m.metadata[CORRELATION_ID_KEY] for m in got] == ["req-123", "own"]
    assert correlation_id() is None


async def test_missing_id_is_created_and_shared() -> None:
    ids = iter(["new-1", "new-2"])
    mw = CorrelationID(CorrelationIDConfig(metadata_key="cid", new_id=lambda: next(ids)))
    inside: list[str | None] = []

    async def handle(msg: Message) -> Message:
        inside.append(correlation_id())
        return Message(b"out")

    incoming = Message(b"in")
    result = await mw(handle)(incoming)
    assert isinstance(result, Message)
    assert incoming.metadata["cid"] == "new-1"
    assert result.metadata["cid"] == "new-1"
    assert inside == ["new-1"]
    second = await mw(handle)(Message(b"in2"))
    assert isinstance(second, Message)
    assert second.metadata["cid"] == "new-2"


async def test_concurrent_messages_keep_their_own_ids() -> None:
    mw = CorrelationID()

    async def handle(msg: Message) -> Message:
        await asyncio.sleep(0.01)
        return Message(b"out", {"seen": correlation_id() or ""})

    results = await asyncio.gather(
        *(mw(handle)(Message(b"x", {CORRELATION_ID_KEY: f"c{i}"})) for i in range(5))
    )
    for i, r in enumerate(results):
        assert isinstance(r, Message)
        assert r.metadata == {"seen": f"c{i}", CORRELATION_ID_KEY: f"c{i}"}
