"""kafka:// runs the conformance suite against a real Kafka-protocol broker (Tansu).

One Tansu broker (memory storage) is started per test module on a free port, behind
a TCP proxy the reconnect test cuts; it is stopped at the end of the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from eventmill import ConfigurationError, Message, open_pubsub
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.pubsub.kafka import KafkaConfig, KafkaPubSub
from eventmill.pubsub.kafka._consumer import KafkaSubscription
from tests.pubsub._kafka_server import TansuServer, tansu_server
from tests.pubsub.conformance import (
    ConformanceSuite,
    Harness,
    collect,
    nothing_arrives,
    outage_is_logged_once,
    unique,
)

#: Short group timeouts so a crashed member's partitions move within seconds.
TEST_OPTIONS = (
    "session_timeout_ms=3000&heartbeat_interval_ms=300&rebalance_timeout_ms=3000"
    "&request_timeout_ms=5000&reconnect_max_delay=0.5"
)


@pytest.fixture(scope="module")
def tansu() -> Iterator[TansuServer]:
    with tansu_server() as server:
        yield server


def url_for(server: TansuServer, extra: str = "") -> str:
    return f"kafka://127.0.0.1:{server.port}?{TEST_OPTIONS}{extra}"


class KafkaHarness(Harness):
    redelivery_timeout = 4.0
    #: A group subscription's close() (and the bus's) leaves the group: it waits for
    #: the coordinator's answer to LeaveGroup, one round trip, so that the group's
    #: other members get its partitions at once rather than after the session timeout.
    #: The bound is half the 1 s fetch wait a close must not wait out.
    close_bound = 0.5

    def __init__(self, server: TansuServer) -> None:
        super().__init__()
        self.server = server

    @property
    def capabilities(self) -> Capabilities:
        return KafkaPubSub.capabilities

    async def _open(self) -> PubSub:
        bus = KafkaPubSub.from_url(url_for(self.server))
        await bus.start()
        return bus

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        extra = "".join(f"&{k}={v}" for k, v in options.items())
        bus = KafkaPubSub.from_url(url_for(self.server, extra))
        await bus.start()
        return bus

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        assert isinstance(sub, KafkaSubscription)
        member = sub._source
        async with asyncio.timeout(30):  # the acked prefixes are committed
            while any(po.needs_commit for po in member._parts.values()):
                await asyncio.sleep(0.005)

    async def crash(self, ps: PubSub) -> None:
        """Members stop without committing and without leaving their groups, as a
        killed process's would: the broker notices after the session timeout."""
        assert isinstance(ps, KafkaPubSub)
        await ps.abort()

    async def restart_server(self, down_for: float) -> None:
        # Tansu's memory storage would lose everything on a restart; cutting every
        # connection (and refusing new ones) is what clients see of a restart.
        await asyncio.to_thread(self.server.proxy.cut)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.server.proxy.restore)


@pytest.fixture
async def kh(tansu: TansuServer) -> AsyncIterator[KafkaHarness]:
    """A harness for the Kafka-specific tests: closes every bus it opened."""
    h = KafkaHarness(tansu)
    yield h
    await h.aclose()


class TestKafkaConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self, tansu: TansuServer) -> AsyncIterator[Harness]:
        h = KafkaHarness(tansu)
        yield h
        await h.aclose()


# -- kafka-specific behaviour -----------------------------------------------------------


async def test_out_of_order_acks_then_restart_redeliver_exactly_the_unacked(
    kh: KafkaHarness,
) -> None:
    """Acks out of order, graceful close, new instance in the group: it gets exactly
    the messages that were not acked (the holes below acked messages are copied to
    the end of their partition before the commit moves past them)."""
    topic, group = unique("t"), unique("g")
    keys = ["a", "b", "c", "d"]
    sent = [Message(f"m{i}".encode(), {"partition_key": keys[i % 4]}) for i in range(24)]
    first = await kh.open()
    sub = await first.subscribe(topic, group=group)
    await first.publish(topic, *sent)
    got = await collect(sub, len(sent), ack=False)
    by_id = {m.id: m for m in got}
    assert set(by_id) == {m.id for m in sent}
    unacked_idx = {0, 3, 7, 8, 13, 22}
    for i in reversed(range(len(sent))):  # newest first: the worst order for a prefix
        if i not in unacked_idx:
            assert by_id[sent[i].id].ack()
    await first.close()

    second = await kh.open()
    again = await second.subscribe(topic, group=group)
    back = await collect(again, len(unacked_idx))
    assert sorted(m.id for m in back) == sorted(sent[i].id for i in unacked_idx)
    for m in back:
        original = sent[int(m.payload[1:])]
        assert (m.id, m.metadata) == (original.id, original.metadata)
    await nothing_arrives(again, 1.5)
    await second.close()


async def test_crash_commits_only_the_contiguous_acked_prefix(kh: KafkaHarness) -> None:
    """Without a graceful close, Kafka's one offset per partition is all that is left:
    an out-of-order ack never commits past an unacked message, so the survivor gets
    every unacked message again, and nothing from the acked prefix."""
    topic, group = unique("t"), unique("g")
    sent = [Message(f"m{i}".encode(), {"partition_key": "one"}) for i in range(12)]
    first = await kh.open()
    sub = await first.subscribe(topic, group=group)
    await first.publish(topic, *sent)
    got = await collect(sub, len(sent), ack=False)
    assert [m.id for m in got] == [m.id for m in sent]  # one key: one partition
    acked = {0, 1, 2, 5, 6, 9, 11}  # the prefix ends before 3
    for i in sorted(acked, reverse=True):
        got[i].ack()
    await asyncio.sleep(0.5)  # let the commit land
    await kh.crash(first)
    survivor = await kh.open()
    again = await survivor.subscribe(topic, group=group)
    back = await collect(again, len(sent) - 3, timeout=30 + kh.redelivery_timeout)
    assert [m.id for m in back] == [m.id for m in sent[3:]]
    await nothing_arrives(again, 1.0)


async def test_nack_holds_the_commit_point(kh: KafkaHarness) -> None:
    """A nacked message is redelivered; closed while still unacked, it (and only it)
    comes back to the next member although later messages were acked."""
    topic, group = unique("t"), unique("g")
    sent = [Message(f"m{i}".encode(), {"partition_key": "k"}) for i in range(4)]
    bus = await kh.open()
    sub = await bus.subscribe(topic, group=group)
    await bus.publish(topic, *sent)
    got = await collect(sub, 4, ack=False)
    got[0].ack()
    got[1].nack()
    got[2].ack()
    got[3].ack()
    (redelivered,) = await collect(sub, 1, ack=False)
    assert redelivered.id == sent[1].id
    await bus.close()  # closes with message 1 unacked

    other = await kh.open()
    again = await other.subscribe(topic, group=group)
    (back,) = await collect(again, 1)
    assert back.id == sent[1].id
    await nothing_arrives(again, 1.0)
    await other.close()


async def test_partition_key_option_picks_the_metadata_field(tansu: TansuServer) -> None:
    topic, group = unique("t"), unique("g")
    bus = await open_pubsub(url_for(tansu, "&key=user_id&partitions=3"))
    assert isinstance(bus, KafkaPubSub)
    assert bus.config.key == "user_id"
    sub = await bus.subscribe(topic, group=group)
    sent = [Message(str(i).encode(), {"user_id": f"u{i % 3}"}) for i in range(60)]
    for m in sent:
        await bus.publish(topic, m)
    got = await collect(sub, len(sent))
    for user in ("u0", "u1", "u2"):
        want = [m.id for m in sent if m.metadata["user_id"] == user]
        assert [m.id for m in got if m.metadata["user_id"] == user] == want
    assert bus._topics[topic] == [0, 1, 2]
    await bus.close()


async def test_foreign_records_get_a_stable_id(kh: KafkaHarness) -> None:
    """Records written by another Kafka producer (no eventmill header) still arrive."""
    from aiokafka import AIOKafkaProducer

    topic, group = unique("t"), unique("g")
    bus = await kh.open()
    sub = await bus.subscribe(topic, group=group)
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{kh.server.port}")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"raw", headers=[("h", b"v")], partition=0)
    finally:
        await producer.stop()
    (msg,) = await collect(sub, 1)
    assert msg.payload == b"raw"
    assert msg.metadata == {"h": "v"}
    assert msg.id == f"{topic}-0-0"
    await bus.close()


async def test_ephemeral_subscription_starts_after_a_batched_backlog(kh: KafkaHarness) -> None:
    """The end of each partition comes from the fetch high watermark: a broker that
    answers ListOffsets with the last batch's base offset (Tansu) must not make an
    ephemeral subscriber see older messages of that batch."""
    topic = unique("t")
    bus = await kh.open()
    await bus.publish(topic, *(Message(b"old", {"partition_key": "k"}) for _ in range(50)))
    sub = await bus.subscribe(topic)
    await bus.publish(topic, Message(b"new", {"partition_key": "k"}))
    (got,) = await collect(sub, 1)
    assert got.payload == b"new"
    await nothing_arrives(sub, 0.5)
    await bus.close()


async def test_unreachable_broker_is_backend_unavailable() -> None:
    from eventmill import BackendUnavailableError
    from tests.conftest import free_port

    bus = KafkaPubSub.from_url(f"kafka://127.0.0.1:{free_port()}?request_timeout_ms=2000")
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        await bus.start()
    await bus.close()


@pytest.mark.parametrize(
    "url",
    [
        "kafka://h:1?partitions=0",
        "kafka://h:1?partitions=x",
        "kafka://h:1?nope=1",
        "kafka://h:1?session_timeout_ms=1000&heartbeat_interval_ms=1000",
        "kafka://user:secret@h:1",
    ],
)
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KafkaPubSub.from_url(url)
    assert "secret" not in str(info.value)


def test_url_options_parse() -> None:
    cfg = KafkaConfig.from_url("kafka://a:1,b:2?key=user_id&partitions=8&commit_interval=0.5")
    assert cfg.bootstrap_servers == "a:1,b:2"
    assert (cfg.key, cfg.partitions, cfg.commit_interval) == ("user_id", 8, 0.5)


async def test_a_lost_broker_logs_one_line_and_aiokafka_lines_can_be_silenced(
    kh: KafkaHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """aiokafka logs every failed attempt under "aiokafka" (silence it there);
    eventmill says once that the broker is unreachable, and once that it is back."""
    bus = await kh.open()

    async def outage() -> None:
        await asyncio.to_thread(kh.server.proxy.cut)
        await asyncio.sleep(2.0)  # the fetch loop notices within a second
        await asyncio.to_thread(kh.server.proxy.restore)

    await outage_is_logged_once(
        caplog, bus, outage, backend_logger="eventmill.pubsub.kafka", client_logger="aiokafka"
    )
