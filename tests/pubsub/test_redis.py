"""redis:// runs the conformance suite against a real Redis, plus its own tests.

Most tests use the shared Redis at 127.0.0.1:6379 with a unique key prefix per
test (deleted afterwards). The reconnect test needs to restart the server, so it
runs against a private ``redis-server`` (see ``_redis_server.py``) started for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from eventmill import (
    BackendUnavailableError,
    ConfigurationError,
    Message,
    open_pubsub,
)
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.pubsub.redis import RedisConfig, RedisPubSub
from eventmill.pubsub.redis._subscription import GroupSubscription
from tests.conftest import REQUIRE_SERVICES, require_service
from tests.pubsub._redis_server import RedisServer, redis_server_binary
from tests.pubsub._tasks import tasks_created
from tests.pubsub._tcp_proxy import TcpProxy
from tests.pubsub.conformance import (
    ConformanceSuite,
    Harness,
    collect,
    collect_ids,
    msgs,
    nothing_arrives,
    outage_is_logged_once,
    parked,
    unique,
)

SHARED_URL = "redis://127.0.0.1:6379/0"
CLAIM_IDLE = 1.0


def need_shared_redis() -> None:
    require_service("Redis", "127.0.0.1", 6379)


def need_redis_server_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        reason = "redis-server binary not found"
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} and EVENTMILL_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(reason)
    return binary


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class RedisHarness(Harness):
    redelivery_timeout = CLAIM_IDLE + 1.0  # claim_idle plus one claim-scan interval
    long_reads = {"block": "5"}

    def __init__(self, url: str, server: RedisServer | None = None) -> None:
        super().__init__()
        self.url = url
        self.server = server
        self.prefix = f"eventmill-test-{uuid.uuid4().hex[:12]}:"

    @property
    def capabilities(self) -> Capabilities:
        return RedisPubSub.capabilities

    def bus_url(self, **options: object) -> str:
        query = {"prefix": self.prefix, "claim_idle": CLAIM_IDLE, **options}
        return self.url + "?" + "&".join(f"{k}={v}" for k, v in query.items())

    async def _open(self) -> PubSub:
        return await open_pubsub(self.bus_url())

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        return await open_pubsub(self.bus_url(**options))

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        assert isinstance(sub, GroupSubscription)
        async with asyncio.timeout(30):
            while sub._acks or sub._flusher is not None:
                await asyncio.sleep(0.005)

    async def crash(self, ps: PubSub) -> None:
        assert isinstance(ps, RedisPubSub)
        await ps.abort()

    async def restart_server(self, down_for: float) -> None:
        assert self.server is not None, "this harness has no private server to restart"
        await self.server.restart(down_for)

    async def aclose(self) -> None:
        await super().aclose()
        if self.server is None:
            await delete_prefix(self.url, self.prefix)


@pytest.fixture
async def private_server() -> AsyncIterator[RedisServer]:
    server = RedisServer(need_redis_server_binary())
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
async def shared() -> AsyncIterator[RedisHarness]:
    need_shared_redis()
    h = RedisHarness(SHARED_URL)
    yield h
    await h.aclose()


class TestRedisConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
        if request.node.originalname == "test_reconnect_after_server_restart":
            server: RedisServer | None = RedisServer(need_redis_server_binary())
            assert server is not None
            await asyncio.to_thread(server.start)
            h = RedisHarness(server.url, server)
        else:
            need_shared_redis()
            server = None
            h = RedisHarness(SHARED_URL)
        try:
            yield h
        finally:
            await h.aclose()
            if server is not None:
                await asyncio.to_thread(server.stop)


# -- a consumer killed for real ---------------------------------------------------------

_VICTIM = textwrap.dedent(
    """
    import asyncio, sys
    from eventmill.pubsub.redis import RedisPubSub

    async def main(url, topic, group, n):
        bus = RedisPubSub.from_url(url)
        await bus.start()
        sub = await bus.subscribe(topic, group=group)
        for _ in range(n):
            msg = await sub.__anext__()
            print(msg.id, flush=True)  # held, never settled
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


async def test_killed_consumers_pending_entries_are_claimed_after_claim_idle(
    shared: RedisHarness,
) -> None:
    topic, group = unique("t"), unique("g")
    url = shared.bus_url(claim_idle=30)  # the victim's own claim_idle does not matter
    producer = await shared.open()
    sent = msgs(5)
    await producer.publish(topic, *sent)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _VICTIM,
        url,
        topic,
        group,
        str(len(sent)),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    held: set[str] = set()
    try:
        async with asyncio.timeout(60):
            while (line := (await proc.stdout.readline()).decode().strip()) != "ready":
                assert line, "victim process exited early"
                held.add(line)
    finally:
        proc.kill()
        await proc.wait()
    assert held == {m.id for m in sent}

    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        pending = await client.xpending(shared.prefix + topic, group)
        assert pending["pending"] == len(sent), "the killed consumer's entries must stay pending"
        assert len(pending["consumers"]) == 1
        dead = pending["consumers"][0]["name"].decode()

        survivor = await open_pubsub(shared.bus_url(block=0.5, consumer_timeout=1.5))
        shared._opened.append(survivor)
        sub = await survivor.subscribe(topic, group=group)
        got = await collect_ids(sub, held)
        assert got == held
        async with asyncio.timeout(30):  # the acks are flushed in the background
            while (await client.xpending(shared.prefix + topic, group))["pending"]:
                await asyncio.sleep(0.05)
        # Once it has nothing pending and stayed idle for consumer_timeout, the dead
        # member is swept from the group; the live one stays.
        assert isinstance(sub, GroupSubscription)
        async with asyncio.timeout(30):
            while dead in (names := await consumer_names(client, shared.prefix + topic, group)):
                await asyncio.sleep(0.2)
        assert sub.consumer in names
        await sub.close()  # nothing to flush: the member is deleted in the background
        async with asyncio.timeout(30):
            while await consumer_names(client, shared.prefix + topic, group):
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


async def consumer_names(client: aioredis.Redis, key: str, group: str) -> set[str]:
    return {c["name"].decode() for c in await client.xinfo_consumers(key, group)}


async def test_concurrent_publishes_share_round_trips(shared: RedisHarness) -> None:
    bus = await shared.open()
    assert isinstance(bus, RedisPubSub)
    topic = unique("t")
    sent = msgs(200)
    await asyncio.gather(*(bus.publish(topic, m) for m in sent))
    stats = bus.publish_stats
    assert stats.messages == len(sent)
    assert stats.round_trips < len(sent) / 10, stats
    sub = await bus.subscribe(topic, group=unique("g"))
    got = await collect(sub, len(sent))
    assert [m.id for m in got] == [m.id for m in sent], "queued publishes keep their order"


async def test_a_lone_publish_is_one_round_trip_in_the_callers_task(
    shared: RedisHarness,
) -> None:
    bus = await shared.open()
    assert isinstance(bus, RedisPubSub)
    topic = unique("t")
    await bus.publish(topic, Message(b"connects"))
    before = bus.publish_stats
    sent = msgs(20)
    with tasks_created() as created:
        for m in sent:
            await bus.publish(topic, m)
    assert created == [], "an awaited publish on an idle publisher starts no task"
    after = bus.publish_stats
    assert after.messages - before.messages == len(sent)
    assert after.round_trips - before.round_trips == len(sent)
    sub = await bus.subscribe(topic, group=unique("g"))
    got = await collect(sub, len(sent) + 1)
    assert [m.id for m in got[1:]] == [m.id for m in sent]


async def test_a_publish_made_during_a_send_waits_for_it_and_keeps_its_order(
    shared: RedisHarness,
) -> None:
    bus = await shared.open()
    assert isinstance(bus, RedisPubSub)
    topic = unique("t")
    await bus.publish(topic, Message(b"connects"))
    first = asyncio.create_task(bus.publish(topic, *msgs(500, "a")))
    await asyncio.sleep(0)  # the first call is now sending, inline
    later = [msgs(1, f"b{i}")[0] for i in range(50)]
    await asyncio.gather(first, *(bus.publish(topic, m) for m in later))
    sub = await bus.subscribe(topic, group=unique("g"))
    got = await collect(sub, 551)
    assert [m.id for m in got[501:]] == [m.id for m in later]
    assert bus.publish_stats.round_trips <= 3, "the 50 queued calls share one round trip"


@pytest.mark.parametrize("ending", ["close", "abort"])
async def test_closing_or_aborting_leaves_no_connection_open(
    shared: RedisHarness, ending: str
) -> None:
    name = unique("eventmill-conn")
    bus = await open_pubsub(shared.bus_url(client_name=name))
    topic = unique("t")
    sub = await bus.subscribe(topic, group=unique("g"))
    await bus.publish(topic, *msgs(3))
    await collect(sub, 3)  # acks go out on the subscription's own connection
    await bus.publish(topic, Message(b"on the publisher's connection"))
    client = aioredis.Redis.from_url(SHARED_URL)
    try:

        async def ours() -> int:
            return sum(1 for c in await client.client_list() if c.get("name") == name)

        assert await ours() >= 3  # reader, ack flusher, publisher
        await getattr(bus, ending)()
        async with asyncio.timeout(10):
            while await ours():
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


# -- maxlen -----------------------------------------------------------------------------


async def test_maxlen_trims_the_stream_approximately(shared: RedisHarness) -> None:
    topic = unique("t")
    bus = await open_pubsub(shared.bus_url(maxlen=100))
    shared._opened.append(bus)
    sent = msgs(3000)
    for i in range(0, len(sent), 250):
        await bus.publish(topic, *sent[i : i + 250])
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        length = await client.xlen(shared.prefix + topic)
    finally:
        await client.aclose()
    assert 100 <= length < len(sent), length
    # A new group replays only what is retained: the newest `length` messages.
    sub = await bus.subscribe(topic, group=unique("g"))
    got = await collect(sub, length)
    assert [m.id for m in got] == [m.id for m in sent[-length:]]
    await nothing_arrives(sub, 0.3)


async def test_entries_trimmed_while_pending_are_dropped_not_delivered(
    shared: RedisHarness,
) -> None:
    topic, group = unique("t"), unique("g")
    bus = await open_pubsub(shared.bus_url(maxlen=10))
    shared._opened.append(bus)
    victim = await open_pubsub(shared.bus_url(maxlen=10))
    sub = await victim.subscribe(topic, group=group)
    await bus.publish(topic, *msgs(5, "old"))
    held = await collect(sub, 5, ack=False)
    assert isinstance(victim, RedisPubSub)
    await victim.abort()
    fresh = msgs(500, "new")
    await bus.publish(topic, *fresh)  # trims the held entries away
    survivor = await bus.subscribe(topic, group=group)
    seen = await collect_ids(survivor, {m.id for m in fresh[-10:]})
    assert not seen & {m.id for m in held}
    await nothing_arrives(survivor, CLAIM_IDLE + 1.0)  # the claim scan drops, never delivers
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        # The claim scan removes trimmed entries from the pending list (nothing else would).
        async with asyncio.timeout(30):
            while (await client.xpending(shared.prefix + topic, group))["pending"]:
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


# -- options and errors -----------------------------------------------------------------


async def test_url_options_are_parsed() -> None:
    bus = RedisPubSub.from_url(
        "rediss://user:pw@example.com:6380/2?prefix=app:&maxlen=5000&batch_size=50"
        "&max_unsettled=500&block=1.5&claim_idle=60&publish_timeout=5&publish_batch=200"
        "&max_pending_publishes=2000&reconnect_max_delay=1&socket_timeout=4&connect_timeout=2"
        "&consumer_timeout=600"
        "&ssl_cert_reqs=none"
    )
    cfg = bus.config
    assert cfg.url == "rediss://user:pw@example.com:6380/2?ssl_cert_reqs=none"
    assert cfg == RedisConfig(
        url=cfg.url,
        prefix="app:",
        maxlen=5000,
        batch_size=50,
        max_unsettled=500,
        block=1.5,
        claim_idle=60.0,
        consumer_timeout=600.0,
        publish_timeout=5.0,
        publish_batch=200,
        max_pending_publishes=2000,
        reconnect_max_delay=1.0,
        socket_timeout=4.0,
        connect_timeout=2.0,
    )
    assert "pw" not in repr(cfg)
    assert "pw" not in repr(bus)
    assert RedisPubSub.from_url("redis://localhost").config.maxlen is None


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost?maxlen=0",
        "redis://localhost?maxlen=ten",
        "redis://localhost?batch_size=0",
        "redis://localhost?claim_idle=-1",
        "redis://localhost?claim_idle=nan",
        "redis://localhost?block=20&socket_timeout=10",
        "redis://localhost?max_unsettled=0",
        "redis://localhost?stall_warning=0",
        "redis://localhost?publish_timeout=soon",
        "redis://localhost?unknown_option=1",
        "redis://localhost?consumer_timeout=1",
        "http://localhost",
    ],
)
async def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        await open_pubsub(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pw@127.0.0.1:6379/0",  # a password the server does not have
        "redis://bob:s3cret-pw@127.0.0.1:6379/0",  # no such user
        "redis://127.0.0.1:6379/99",  # no such database
    ],
)
async def test_a_server_refusing_the_urls_credentials_or_database_is_a_configuration_error(
    url: str,
) -> None:
    """As PostgreSQL's unknown role or database: the URL is wrong, retrying will not
    mend it, so it is not "unavailable"."""
    with pytest.raises(ConfigurationError) as info:
        await open_pubsub(url)
    assert "s3cret-pw" not in str(info.value)


async def test_unreachable_server_errors_hide_the_password() -> None:
    dead_port = 1  # nothing listens on port 1 of localhost
    url = f"redis://:s3cret-pw@127.0.0.1:{dead_port}/0?publish_timeout=0.3&connect_timeout=0.5"
    with pytest.raises(BackendUnavailableError) as started:
        await open_pubsub(url)
    assert "s3cret-pw" not in str(started.value)
    assert "***" in str(started.value)
    bus = RedisPubSub.from_url(url)
    with pytest.raises(BackendUnavailableError) as published:
        await bus.publish(unique("t"), Message(b"x"))
    assert "s3cret-pw" not in str(published.value)
    await bus.close()


async def test_publish_waits_through_an_outage_and_raises_after_publish_timeout(
    private_server: RedisServer,
) -> None:
    patient = await open_pubsub(private_server.url + "?publish_timeout=30&reconnect_max_delay=0.2")
    hasty = await open_pubsub(private_server.url + "?publish_timeout=0.5&reconnect_max_delay=0.1")
    try:
        topic = unique("t")
        await patient.publish(topic, Message(b"before"))
        private_server.kill()
        with pytest.raises(BackendUnavailableError):
            await hasty.publish(topic, Message(b"gives up"))
        waiting = asyncio.create_task(patient.publish(topic, Message(b"during")))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await asyncio.to_thread(private_server.start)
        await asyncio.wait_for(waiting, 30)
        sub = await patient.subscribe(topic, group=unique("g"))
        got = await collect(sub, 2)
        assert [m.payload for m in got] == [b"before", b"during"]
    finally:
        for bus in (patient, hasty):
            with contextlib.suppress(Exception):
                await bus.close()


# -- replies lost in a restart ----------------------------------------------------------

#: claim_idle of the tests below: an entry whose reply was lost waits this long for the
#: claim scan unless the consumer re-reads its own pending list after reconnecting.
LONG_CLAIM_IDLE = 60.0
#: Most seconds between a publish returning and the message being handled, across a
#: restart (server down, reconnect backoff, re-read): well below LONG_CLAIM_IDLE.
RESTART_DELAY_BOUND = 10.0


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    need_shared_redis()
    p = TcpProxy(6379)
    await asyncio.to_thread(p.start)
    try:
        yield p
    finally:
        await asyncio.to_thread(p.stop)


async def test_an_entry_whose_reply_was_lost_is_handled_after_the_reconnect(
    proxy: TcpProxy, shared: RedisHarness
) -> None:
    """XREADGROUP handed an entry to the consumer, its reply never arrived, the
    connection dropped: the consumer reads its own pending list again after it
    reconnects, so the entry comes at once instead of after claim_idle."""
    topic, group = unique("t"), unique("g")
    options = {"prefix": shared.prefix, "claim_idle": LONG_CLAIM_IDLE, "block": 5}
    query = "&".join(f"{k}={v}" for k, v in options.items())
    consumer_bus = await open_pubsub(f"redis://127.0.0.1:{proxy.port}/0?{query}")
    shared._opened.append(consumer_bus)
    producer = await shared.open()
    sub = await consumer_bus.subscribe(topic, group=group)
    reader = await parked(sub)
    await asyncio.sleep(0.3)  # the consumer waits in its blocking XREADGROUP
    await asyncio.to_thread(proxy.swallow)
    sent = Message(b"lost reply")
    await producer.publish(topic, sent)
    client = aioredis.Redis.from_url(SHARED_URL)
    try:
        async with asyncio.timeout(10):  # handed to our consumer, the reply swallowed
            while (await client.xpending(shared.prefix + topic, group))["pending"] != 1:
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()
    assert not reader.done()
    await asyncio.to_thread(proxy.cut)
    await asyncio.to_thread(proxy.restore)
    got = await asyncio.wait_for(reader, RESTART_DELAY_BOUND)
    assert got.id == sent.id
    got.ack()


async def test_restarts_under_load_delay_no_message_until_claim_idle(
    private_server: RedisServer,
) -> None:
    """Redis killed and restarted three times while messages stream through a group
    whose consumer lags behind (so each read brings a batch published earlier): every
    message is handled within RESTART_DELAY_BOUND of its publish returning.

    A restart loses the replies Redis had not sent when it died, XREADGROUP's among
    them: the entries are then pending for the consumer, which never saw them (they
    used to wait for claim_idle). The consumer reaches the server through a proxy that
    drops the replies of the last 50 ms before each kill, so every restart loses some
    (a kill alone hits that window only by chance).
    """
    proxy = TcpProxy(private_server.port)
    await asyncio.to_thread(proxy.start)
    options = f"?claim_idle={LONG_CLAIM_IDLE}&reconnect_max_delay=0.5"
    producer = await open_pubsub(private_server.url + options)
    consumer_bus = await open_pubsub(f"redis://127.0.0.1:{proxy.port}/0{options}")
    topic, group = unique("t"), unique("g")
    total, batch, restarts = 4000, 20, 3
    published: dict[str, float] = {}
    handled: dict[str, float] = {}
    sub = await consumer_bus.subscribe(topic, group=group)
    done = asyncio.Event()

    async def consume() -> None:
        async for m in sub:
            handled.setdefault(m.id, time.monotonic())
            m.ack()
            if len(handled) == total:
                done.set()
            await asyncio.sleep(0.0005)  # lag behind: reads bring backlog

    async def publish() -> None:
        for start in range(0, total, batch):
            sent = [Message(str(i).encode()) for i in range(start, start + batch)]
            await producer.publish(topic, *sent)
            now = time.monotonic()
            published.update((m.id, now) for m in sent)

    consumer = asyncio.create_task(consume())
    publisher = asyncio.create_task(publish())
    try:
        for restart in range(1, restarts + 1):
            async with asyncio.timeout(60):  # at 1/4, 2/4 and 3/4 of the stream
                while len(published) < total * restart // (restarts + 1):
                    await asyncio.sleep(0.005)
            await asyncio.to_thread(proxy.swallow)
            await asyncio.sleep(0.05)
            await private_server.restart(down_for=0.2)
            await asyncio.to_thread(proxy.cut)  # (ends the swallowing)
            await asyncio.to_thread(proxy.restore)
        await asyncio.wait_for(publisher, 120)
        with contextlib.suppress(TimeoutError):  # the last ones are late after this
            await asyncio.wait_for(done.wait(), RESTART_DELAY_BOUND + 1)
        now = time.monotonic()
        delays = {mid: handled.get(mid, now) - at for mid, at in published.items()}
        late = {mid: d for mid, d in delays.items() if d > RESTART_DELAY_BOUND}
        assert not late, (
            f"{len(late)} of {total} messages handled more than {RESTART_DELAY_BOUND}s after "
            f"their publish returned (worst {max(late.values()):.1f}s; claim_idle "
            f"{LONG_CLAIM_IDLE}s)"
        )
        assert set(handled) == set(published)
    finally:
        for task in (consumer, publisher):
            task.cancel()
        await asyncio.gather(consumer, publisher, return_exceptions=True)
        for bus in (producer, consumer_bus):
            with contextlib.suppress(Exception):
                await bus.close()
        await asyncio.to_thread(proxy.stop)


async def test_a_restart_logs_one_line(
    private_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Readers, ack flushes and publishes meet the same outage: eventmill says once
    that Redis is unreachable, and once that it is back (redis-py logs nothing)."""
    from eventmill.pubsub._outage import reconnects

    before = reconnects().get("redis://", 0)
    bus = await open_pubsub(private_server.url + "?reconnect_max_delay=0.2")
    try:
        await outage_is_logged_once(
            caplog,
            bus,
            lambda: private_server.restart(1.0),
            backend_logger="eventmill.pubsub.redis",
            client_logger=None,
        )
        assert reconnects()["redis://"] == before + 2  # two outages, each came back
    finally:
        await bus.close()
