"""nats:// runs the conformance suite against a real JetStream server, plus its own tests.

Most tests use the shared server on 127.0.0.1:4222 with a unique stream prefix per
test (the streams are deleted at teardown); the restart tests run a private
``nats-server -js`` on a free port with file storage in a temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import api

from eventmill import (
    BackendUnavailableError,
    ConfigurationError,
    Message,
    PublishError,
    SubscribeError,
    open_pubsub,
)
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.pubsub.nats import NatsConfig, NatsPubSub, NatsSubscription
from eventmill.pubsub.nats._config import consumer_name, stream_name
from tests.conftest import REQUIRE_SERVICES, free_port, require_service
from tests.pubsub._nats_server import NatsServer
from tests.pubsub.conformance import (
    ConformanceSuite,
    Harness,
    collect,
    collect_ids,
    msgs,
    nothing_arrives,
    outage_is_logged_once,
    unique,
)

SHARED = "nats://127.0.0.1:4222"
ACK_WAIT = 1.0


def _prefix() -> str:
    return f"emtest-{uuid.uuid4().hex[:10]}-"


async def _delete_streams(url: str, prefix: str) -> None:
    """Delete the streams a test created (those named with its unique prefix)."""
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith(prefix):
                with contextlib.suppress(Exception):
                    await js.delete_stream(info.config.name)
    finally:
        await nc.close()


class NatsHarness(Harness):
    redelivery_timeout = ACK_WAIT
    long_reads = {"fetch_timeout": "5"}

    def __init__(self, url: str, server: NatsServer | None = None) -> None:
        super().__init__()
        self.prefix = _prefix()
        self.base = url
        self.url = (
            f"{url}?ack_wait={ACK_WAIT}&stream_prefix={self.prefix}"
            "&reconnect_max_delay=0.5&fetch_timeout=1"
        )
        self.server = server

    @property
    def capabilities(self) -> Capabilities:
        return NatsPubSub.from_url(self.url).capabilities

    async def _open(self) -> PubSub:
        return await open_pubsub(self.url)

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        return await open_pubsub(self.url + "".join(f"&{k}={v}" for k, v in options.items()))

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        assert isinstance(sub, NatsSubscription)
        async with asyncio.timeout(30):  # sent, and a flush confirmed them
            while sub._settlements or sub._sent != sub._confirmed:
                await asyncio.sleep(0.005)

    async def crash(self, ps: PubSub) -> None:
        assert isinstance(ps, NatsPubSub)
        await ps.abort()

    async def restart_server(self, down_for: float) -> None:
        if self.server is None:
            raise NotImplementedError("restart needs the private server")
        await self.server.restart(down_for)

    async def aclose(self) -> None:
        await super().aclose()
        if self.server is None:
            with contextlib.suppress(Exception):
                await _delete_streams(self.base, self.prefix)


def _need_nats_server_binary() -> None:
    if NatsServer.available():
        return
    if REQUIRE_SERVICES:
        pytest.fail("nats-server binary not found and EVENTMILL_REQUIRE_SERVICES=1")
    pytest.skip("nats-server binary not found")


@pytest.fixture
async def private_server() -> AsyncIterator[NatsServer]:
    _need_nats_server_binary()
    server = NatsServer()
    await server.start()
    try:
        yield server
    finally:
        await server.cleanup()


class TestNatsConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
        if request.node.originalname == "test_reconnect_after_server_restart":
            _need_nats_server_binary()
            server = NatsServer()
            await server.start()
            h = NatsHarness(server.url, server)
            try:
                yield h
            finally:
                await h.aclose()
                await server.cleanup()
            return
        require_service("NATS", "127.0.0.1", 4222)
        h = NatsHarness(SHARED)
        yield h
        await h.aclose()


# -- backend-specific behaviour against the shared server -------------------------------


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_service("NATS", "127.0.0.1", 4222)
    p = _prefix()
    yield p
    await _delete_streams(SHARED, p)


async def _open(prefix: str, options: str = "") -> NatsPubSub:
    bus = await open_pubsub(f"{SHARED}?stream_prefix={prefix}&ack_wait={ACK_WAIT}{options}")
    assert isinstance(bus, NatsPubSub)
    return bus


async def test_nak_delay_postpones_redelivery(prefix: str) -> None:
    bus = await _open(prefix, "&nak_delay=2")
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, Message(b"later"))
    (first,) = await collect(sub, 1, ack=False)
    first.nack()
    await nothing_arrives(sub, 1.0)  # without the delay it would come back at once
    (again,) = await collect(sub, 1)
    assert again.id == first.id
    await bus.close()


async def test_max_deliver_stops_redelivery(prefix: str) -> None:
    bus = await _open(prefix, "&max_deliver=2")
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    poison = Message(b"poison")
    await bus.publish(topic, poison)
    for _ in range(2):
        (m,) = await collect(sub, 1, ack=False)
        assert m.id == poison.id
        m.nack()
    await nothing_arrives(sub, ACK_WAIT + 0.5)
    await bus.publish(topic, Message(b"next"))
    (nxt,) = await collect(sub, 1)
    assert nxt.payload == b"next"
    await bus.close()


async def test_term_drops_the_message_for_good(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, Message(b"bad"))
    (m,) = await collect(sub, 1, ack=False)
    assert sub.term(m)
    assert m.nacked
    await nothing_arrives(sub, ACK_WAIT + 0.5)
    await bus.close()


async def test_messages_arriving_while_closing_reach_the_next_member_once(prefix: str) -> None:
    # publish() returns on the PubAcks, so the deliveries to the first member's pull
    # request often arrive once close() began. Were they nacked at once while that
    # request still waited on the server without its inbox, nats-server 2.9 would
    # send the last message again as new and hold one back until ack_wait. ack_wait is
    # 30 s here: a loaded machine holding a message a second unacked must not count as
    # that duplicate (the hold-back shows as a collect timeout).
    url = f"{SHARED}?stream_prefix={prefix}&ack_wait=30&fetch_timeout=1"

    async def handover() -> None:
        topic = unique("t")
        first = await open_pubsub(url)
        await first.subscribe(topic, group="g")
        sent = msgs(30)
        await first.publish(topic, *sent)
        await first.close()
        second = await open_pubsub(url)
        sub = await second.subscribe(topic, group="g")
        got = await collect(sub, 30)
        assert sorted(m.id for m in got) == sorted(m.id for m in sent)
        await second.close()  # flushes the acks
        info = await _group_info(prefix, topic)
        assert (info.num_ack_pending, info.num_redelivered) == (0, 0)

    for _ in range(5):  # a round catches the old behaviour only some of the time
        await handover()


@pytest.mark.parametrize("other", ["member", "newcomer"])
@pytest.mark.parametrize("handed_back", ["nack-queued", "nack-sent", "unsettled"])
async def test_what_a_closing_member_hands_back_comes_back_at_once(
    prefix: str, handed_back: str, other: str
) -> None:
    """A message nacked right before close() (still queued, or just sent by the settle
    loop), or left unsettled, reaches the group's next member (already subscribed, or
    subscribing after the close) at once: not after ack_wait (30 s here), nor after the
    closing member's pull requests expired (fetch_timeout, 5 s), and without another
    message coming back with it. Once nacked while a pull request of the closing member
    was still queued on the server without its inbox, nats-server 2.9 dropped the
    redelivery until ack_wait and sent the last message delivered (acked here) again."""
    url = f"{SHARED}?stream_prefix={prefix}&ack_wait=30&fetch_timeout=5"
    first, second = await open_pubsub(url), await open_pubsub(url)
    topic = unique("t")
    sub = await first.subscribe(topic, group="g")
    assert isinstance(sub, NatsSubscription)
    sent = msgs(3)
    await first.publish(topic, *sent)
    held = await collect(sub, 3, ack=False)
    for m in held[1:]:
        m.ack()
    async with asyncio.timeout(10):  # the acks reached the server
        while sub._settlements or sub._sent != sub._confirmed:
            await asyncio.sleep(0.005)
    again = await second.subscribe(topic, group="g") if other == "member" else None
    if handed_back != "unsettled":
        batches = sub._sent
        assert held[0].nack()
        if handed_back == "nack-sent":
            async with asyncio.timeout(10):
                while sub._sent == batches:
                    await asyncio.sleep(0)
    await first.close()
    if again is None:
        again = await second.subscribe(topic, group="g")
    # the bound: well below fetch_timeout (the old hand-back waited that long), and far
    # above the ~0.1 s it takes, so a loaded machine does not fail it
    (back,) = await collect(again, 1, timeout=4.0)
    assert back.id == held[0].id
    await nothing_arrives(again, 0.5)
    await second.close()


async def test_a_closing_member_with_a_backlog_hands_everything_back_at_once(prefix: str) -> None:
    """With more messages on the server than a member pulls (batch=2), the pull request
    close() sends to learn that the server dropped the member's requests brings one:
    it goes back with the nacked one and those in flight, and the next member gets
    every message once and at once (ack_wait is 30 s)."""
    url = f"{SHARED}?stream_prefix={prefix}&ack_wait=30&batch=2"
    first, second = await open_pubsub(url), await open_pubsub(url)
    topic = unique("t")
    sub = await first.subscribe(topic, group="g")
    sent = msgs(20)
    await first.publish(topic, *sent)
    (m,) = await collect(sub, 1, ack=False)
    assert m.nack()
    await first.close()
    again = await second.subscribe(topic, group="g")
    got = await collect(again, 20, timeout=4.0)  # fetch_timeout is 5 s
    assert sorted(x.id for x in got) == sorted(x.id for x in sent)
    await nothing_arrives(again, 0.5)
    await second.close()


async def _group_info(prefix: str, topic: str) -> api.ConsumerInfo:
    nc = await nats.connect(SHARED)
    try:
        return await nc.jetstream().consumer_info(stream_name(prefix, topic), "g")
    finally:
        await nc.close()


async def test_streams_and_consumers_are_named_by_the_documented_scheme(prefix: str) -> None:
    bus = await _open(prefix)
    topic = f"orders.created_{uuid.uuid4().hex[:6]}"
    sub = await bus.subscribe(topic, group="billing.v1")
    await bus.publish(topic, *msgs(3))
    await collect(sub, 3)
    name = stream_name(prefix, topic)
    assert name == prefix + topic.replace("_", "_5F").replace(".", "_2E")
    info = await bus._js.stream_info(name)
    assert info.config.subjects == [f"eventmill.{topic}"]
    assert info.state.messages == 3
    consumer = await bus._js.consumer_info(name, consumer_name("billing.v1"))
    assert consumer.config.durable_name == "billing_2Ev1"
    assert consumer.config.ack_wait == ACK_WAIT
    await bus.close()


def test_stream_names_of_distinct_topics_differ() -> None:
    names = {stream_name("p-", t) for t in ("a.b", "a_b", "a_2Eb", "a__b", "a._b", "a_.b")}
    assert len(names) == 6
    assert all("." not in n for n in names)
    long = stream_name("p-", "x" * 200)
    assert len(long) <= 200
    assert long != stream_name("p-", "x" * 199 + "y")


async def test_an_existing_stream_capturing_the_subject_is_reused(prefix: str) -> None:
    topic = unique("t")
    own = f"{prefix}custom"
    nc = await nats.connect(SHARED)
    js = nc.jetstream()
    await js.add_stream(name=own, subjects=[f"eventmill.{topic}", "other.subject"])
    bus = await _open(prefix)
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, *msgs(2))
    await collect(sub, 2)
    assert (await js.stream_info(own)).state.messages == 2
    await bus.close()
    await nc.close()


async def test_messages_from_other_nats_clients_are_received(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    nc = await nats.connect(SHARED)
    ack = await nc.jetstream().publish(f"eventmill.{topic}", b"raw", headers={"Color": "red"})
    (m,) = await collect(sub, 1)
    assert m.id == f"{stream_name(prefix, topic)}:{ack.seq}"
    assert m.metadata == {"Color": "red"}
    assert m.payload == b"raw"
    await nc.close()
    await bus.close()


async def test_republishing_the_same_id_is_stored_once(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    m = Message(b"once")
    await bus.publish(topic, m)
    await bus.publish(topic, m)  # e.g. a retry after a lost PubAck
    await bus.publish(topic, Message(b"marker"))
    got = await collect(sub, 2)
    assert [x.payload for x in got] == [b"once", b"marker"]
    await bus.close()


async def test_ephemeral_consumer_is_removed_on_close(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    sub = await bus.subscribe(topic)
    name = stream_name(prefix, topic)
    assert (await bus._js.stream_info(name)).state.consumer_count == 1
    await sub.close()
    assert (await bus._js.stream_info(name)).state.consumer_count == 0
    await bus.close()


async def test_payload_over_server_limit_is_a_publish_error(prefix: str) -> None:
    bus = await _open(prefix)
    too_big = Message(b"x" * (bus._nc.max_payload + 1))
    with pytest.raises(PublishError, match="max_payload"):
        await bus.publish(unique("t"), too_big)
    await bus.close()


# -- options, errors, reconnect ---------------------------------------------------------


def test_url_options_are_parsed() -> None:
    cfg = NatsConfig.from_url(
        "nats://alice:s%40cret@h1:4223,h2?ack_wait=2.5&max_deliver=3&nak_delay=0.5"
        "&batch=50&storage=memory&dedupe=false&subject_prefix=&stream_prefix=app-"
    )
    assert cfg.servers == ("nats://h1:4223", "nats://h2:4222")
    assert (cfg.user, cfg.password, cfg.token) == ("alice", "s@cret", None)
    assert (cfg.ack_wait, cfg.max_deliver, cfg.nak_delay, cfg.batch) == (2.5, 3, 0.5, 50)
    assert cfg.storage == "memory"
    assert cfg.dedupe is False
    assert (cfg.subject_prefix, cfg.stream_prefix) == ("", "app-")
    assert "s@cret" not in repr(cfg)
    assert NatsPubSub(cfg).capabilities.persistent is False
    token = NatsConfig.from_url("tls://tok3n@example.org")
    assert (token.token, token.servers) == ("tok3n", ("tls://example.org:4222",))
    assert NatsConfig.from_url("nats://") == NatsConfig()


@pytest.mark.parametrize(
    "url",
    [
        "nats://localhost?ack_wait=0",
        "nats://localhost?ack_wait=soon",
        "nats://localhost?max_deliver=0",
        "nats://localhost?batch=0",
        "nats://localhost?max_unsettled=0",
        "nats://localhost?stall_warning=-1",
        "nats://localhost?storage=disk",
        "nats://localhost?dedupe=maybe",
        "nats://localhost?stream_prefix=a.b",
        "nats://localhost?subject_prefix=no-dot",
        "nats://localhost?nak_delay=-1",
        "nats://localhost?unknown=1",
        "redis://localhost",
    ],
)
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        NatsConfig.from_url(url)


async def test_unreachable_server_is_backend_unavailable_without_the_password() -> None:
    url = f"nats://bob:hunter2@127.0.0.1:{free_port()}?connect_timeout=1"
    with pytest.raises(BackendUnavailableError) as info:
        await open_pubsub(url)
    assert "hunter2" not in str(info.value)


async def test_publish_while_server_down_raises_after_the_deadline(
    private_server: NatsServer,
) -> None:
    bus = await open_pubsub(f"{private_server.url}?publish_deadline=1&publish_timeout=0.5")
    topic = unique("t")
    await bus.publish(topic, Message(b"up"))
    await private_server.stop()
    with pytest.raises(PublishError):
        await bus.publish(topic, Message(b"down"))
    await private_server.start()
    # The same instance reconnects by itself (a call may still time out while it does).
    for _ in range(30):
        with contextlib.suppress(PublishError):
            await bus.publish(topic, Message(b"up again"))
            break
    else:
        pytest.fail("publishing did not resume after the server came back")
    sub = await bus.subscribe(topic, group="g")
    up, again = unique("up"), unique("again")
    await bus.publish(topic, Message(b"marker-1", id=up))
    await bus.publish(topic, Message(b"marker-2", id=again))
    # "down" may have been stored after all (nats-py sent it on reconnect): a failed
    # publish means "assume not published", and a retry with the same id is dropped.
    seen = await collect_ids(sub, {up, again})
    assert {up, again} <= seen
    await bus.close()


async def test_group_survives_restart_with_unacked_messages(private_server: NatsServer) -> None:
    bus = await open_pubsub(f"{private_server.url}?ack_wait={ACK_WAIT}&reconnect_max_delay=0.5")
    assert isinstance(bus, NatsPubSub)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    sent = msgs(20)
    await bus.publish(topic, *sent)
    held = await collect(sub, 20, ack=False)
    for m in held[:10]:
        m.ack()
    assert isinstance(sub, NatsSubscription)
    await sub._send_settlements()  # the acks reach the server before it stops
    await bus._nc.flush()
    await private_server.restart(0.5)
    # The ten unacked come back (ack_wait); the acked ones stay acked.
    back = await collect(sub, 10)
    assert {m.id for m in back} == {m.id for m in held[10:]}
    await nothing_arrives(sub, ACK_WAIT + 0.5)
    await bus.close()


async def test_stream_is_created_with_configured_limits(prefix: str) -> None:
    bus = await _open(prefix, "&max_msgs=5&storage=memory&max_age=3600")
    topic = unique("t")
    await bus.publish(topic, *msgs(8))
    info = await bus._js.stream_info(stream_name(prefix, topic))
    assert info.config.storage == api.StorageType.MEMORY
    assert info.config.max_msgs == 5
    assert info.state.messages == 5
    assert info.config.max_age == 3600
    await bus.close()


async def test_ephemeral_subscription_resumes_after_server_restart(
    private_server: NatsServer,
) -> None:
    bus = await open_pubsub(f"{private_server.url}?reconnect_max_delay=0.5&fetch_timeout=1")
    topic = unique("t")
    sub = await bus.subscribe(topic)
    await bus.publish(topic, Message(b"before"))
    (first,) = await collect(sub, 1)
    assert first.payload == b"before"
    await private_server.restart(0.5)
    after = Message(b"after")
    await bus.publish(topic, after)
    seen = await collect_ids(sub, {after.id})
    assert after.id in seen
    await sub.close()
    await bus.close()


async def test_ids_that_are_not_header_safe_round_trip(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    ids = [" leading space", "line\r\nbreak", "ünïcode ✓", "trailing "]
    await bus.publish(topic, *(Message(b"x", {"k": "v"}, id=i) for i in ids))
    got = await collect(sub, len(ids))
    assert [m.id for m in got] == ids
    assert all(m.metadata == {"k": "v"} for m in got)
    await bus.close()


async def test_group_named_like_a_push_consumer_is_a_subscribe_error(prefix: str) -> None:
    bus = await _open(prefix)
    topic = unique("t")
    await bus.publish(topic, Message(b"x"))
    await bus._js.add_consumer(
        stream_name(prefix, topic),
        config=api.ConsumerConfig(durable_name="pushy", deliver_subject=unique("deliver")),
    )
    with pytest.raises(SubscribeError, match="push consumer"):
        await bus.subscribe(topic, group="pushy")
    await bus.close()


async def test_a_restart_logs_one_line_and_nats_py_lines_can_be_silenced(
    private_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """eventmill says once that the server is unreachable (and once that it is back);
    what nats-py reports through its callbacks goes to eventmill.pubsub.nats.client."""
    bus = await open_pubsub(f"{private_server.url}?reconnect_max_delay=0.2&fetch_timeout=1")
    try:
        await outage_is_logged_once(
            caplog,
            bus,
            lambda: private_server.restart(1.0),
            backend_logger="eventmill.pubsub.nats",
            client_logger="eventmill.pubsub.nats.client",
        )
    finally:
        await bus.close()
