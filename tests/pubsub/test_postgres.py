"""postgresql:// runs the conformance suite against a real server, plus its own tests.

The shared server (127.0.0.1:5432, database ``test``) hosts every test except the
restart test; this module uses a schema of its own, dropped at teardown. The restart
test runs against a throwaway cluster (``_postgres_server.PostgresServer``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from eventmill import (
    BackendUnavailableError,
    ConfigurationError,
    Message,
    open_pubsub,
)
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.pubsub.postgres import PostgresConfig, PostgresPubSub
from eventmill.pubsub.postgres._asyncpg import Connection
from eventmill.pubsub.postgres._publishing import Row
from eventmill.pubsub.postgres._runner import CONSUMER_SETTINGS
from tests.conftest import REQUIRE_SERVICES, free_port, require_service
from tests.pubsub import _postgres_server
from tests.pubsub._tasks import tasks_created
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

HOST, PORT = "127.0.0.1", 5432
BASE = f"postgresql://postgres@{HOST}:{PORT}/test"
VISIBILITY = 2.0


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """A schema of this module's own on the shared server, dropped afterwards."""
    require_service("PostgreSQL", HOST, PORT)
    name = f"emt_{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(BASE)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def url(schema: str, base: str = BASE, **options: object) -> str:
    opts = {"schema": schema, "visibility_timeout": VISIBILITY, **options}
    return base + "?" + "&".join(f"{k}={v}" for k, v in opts.items())


class PostgresHarness(Harness):
    redelivery_timeout = VISIBILITY

    def __init__(self, url: str, server: _postgres_server.PostgresServer | None = None) -> None:
        super().__init__()
        self.url = url
        self.server = server

    @property
    def capabilities(self) -> Capabilities:
        return PostgresPubSub.capabilities

    async def _open(self) -> PubSub:
        return await open_pubsub(self.url)

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        return await open_pubsub(self.url + "".join(f"&{k}={v}" for k, v in options.items()))

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        assert isinstance(ps, PostgresPubSub)
        await ps.flush_settlements()

    async def crash(self, ps: PubSub) -> None:
        assert isinstance(ps, PostgresPubSub)
        await ps.abort()

    async def restart_server(self, down_for: float) -> None:
        assert self.server is not None, "this test needs the throwaway cluster"
        await self.server.restart(down_for)


@pytest.fixture
def throwaway_server() -> Iterator[_postgres_server.PostgresServer]:
    if not _postgres_server.available():
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found"
        if REQUIRE_SERVICES:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = _postgres_server.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class TestPostgresConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self, request: pytest.FixtureRequest, schema: str) -> AsyncIterator[Harness]:
        # A long fallback poll: the suite passes only if NOTIFY and lease expiry wake consumers.
        if request.node.name.startswith("test_reconnect_after_server_restart"):
            server = request.getfixturevalue("throwaway_server")
            h = PostgresHarness(url(schema, server.url, poll_interval=30), server)
        else:
            h = PostgresHarness(url(schema, poll_interval=30))
        yield h
        await h.aclose()


# -- correctness under concurrency ------------------------------------------------------


async def test_message_committed_late_is_delivered_first_never_skipped(schema: str) -> None:
    """The out-of-order-commit hazard: seq N commits after seq N+1.

    A cursor on seq would hand out N+1 and skip N for good. Here N+1 waits until N's
    transaction ends, then both arrive in commit-key order (N's transaction began first).
    """
    bus = PostgresPubSub.from_url(url(schema, poll_interval=3600))
    await bus.start()
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    tid = bus._tids[topic]
    sql = bus.sql
    late = Message(b"late", {"who": "slow"})
    early = Message(b"early")
    raw = await asyncpg.connect(bus.config.dsn)
    try:
        # A publisher that takes its seq now and commits later: the bus's own INSERT
        # (its trigger notifies at commit) in a transaction held open.
        tx = raw.transaction()
        await tx.start()
        await raw.execute(sql.publish, [tid], [late.id], ['{"who": "slow"}'], [late.payload])
        seq_of = f"SELECT seq FROM {sql.table('messages')} WHERE msg_id = $1"
        late_seq = await raw.fetchval(seq_of, late.id)
        await bus.publish(topic, early)
        early_seq = await raw.fetchval(seq_of, early.id)
        assert late_seq < early_seq, "the test did not build the hazard"
        await nothing_arrives(sub, 0.5)
        await tx.commit()
    finally:
        await raw.close()
    got = await collect(sub, 2, timeout=10)
    assert [m.id for m in got] == [late.id, early.id]
    assert got[0].metadata == {"who": "slow"}
    await bus.close()


async def test_unrelated_open_transaction_delays_delivery_until_it_ends(
    schema: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery waits behind any open writing transaction, resumes without a NOTIFY
    once it ends, and a warning names the backend holding it back."""
    from eventmill.pubsub.postgres import _subscriptions as _postgres_subscriptions

    monkeypatch.setattr(_postgres_subscriptions, "_HELD_BACK_WARN", 0.3)
    bus = await open_pubsub(url(schema, poll_interval=3600))
    topic = unique("t")
    sub = await bus.subscribe(topic, group=unique("g"))
    other = await asyncpg.connect(BASE)
    try:
        tx = other.transaction()
        await tx.start()
        pid = await other.fetchval("SELECT pg_backend_pid()")
        await other.fetchval("SELECT pg_current_xact_id()")  # now it holds the horizon
        sent = Message(b"waits")
        with caplog.at_level("WARNING", logger="eventmill.pubsub.postgres"):
            await bus.publish(topic, sent)
            await nothing_arrives(sub, 1.0)
        assert f"pid {pid}" in caplog.text
        await tx.commit()  # no NOTIFY for the topic: the consumer looks again by itself
    finally:
        await other.close()
    (got,) = await collect(sub, 1, timeout=3)
    assert got.id == sent.id
    await bus.close()


async def test_tables_of_an_incompatible_layout_are_refused(schema: str) -> None:
    prefix = f"old{uuid.uuid4().hex[:6]}_"
    conn = await asyncpg.connect(BASE)
    try:
        await conn.execute(
            f'CREATE TABLE "{schema}"."{prefix}messages" (tid integer, seq bigint, '
            "msg_id text, metadata text, payload bytea)"
        )
    finally:
        await conn.close()
    with pytest.raises(ConfigurationError, match="older eventmill"):
        await open_pubsub(url(schema, table_prefix=prefix))


async def test_concurrent_publishers_and_consumers_lose_and_duplicate_nothing(
    schema: str,
) -> None:
    """Four buses publish at once; three group members on two buses split the work."""
    publishers = [await open_pubsub(url(schema, publish_batch=50)) for _ in range(4)]
    consumers = [await open_pubsub(url(schema, prefetch=20)) for _ in range(2)]
    topic, group = unique("t"), unique("g")
    subs = [await consumers[i % 2].subscribe(topic, group=group) for i in range(3)]
    sent: list[str] = []
    seen: list[str] = []
    total = 3000

    async def produce(bus: PubSub, p: int) -> None:
        for i in range(total // 4 // 5):
            batch = [Message(f"{p}-{i}-{j}".encode()) for j in range(5)]
            sent.extend(m.id for m in batch)
            await bus.publish(topic, *batch)

    async def consume(sub: object) -> None:
        async for m in sub:  # type: ignore[attr-defined]
            seen.append(m.id)
            m.ack()

    tasks = [asyncio.create_task(consume(s)) for s in subs]
    await asyncio.gather(*(produce(b, p) for p, b in enumerate(publishers)))
    try:
        async with asyncio.timeout(60):
            while len(seen) < total:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(sent) == total
    assert set(seen) == set(sent)
    assert len(seen) == len(set(seen)), "a message was delivered twice"
    for b in [*publishers, *consumers]:
        await b.close()


async def test_publishing_goes_on_when_the_connections_it_keeps_are_killed(schema: str) -> None:
    """Publish workers keep their connection between batches; killing those backends
    mid-stream costs a retry on a new connection, not a publish error or a message."""
    bus = PostgresPubSub.from_url(url(schema))
    await bus.start()
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    table = bus.sql.table("messages")
    sent: set[str] = set()
    killed = 0

    async def produce(p: int) -> None:
        for i in range(100):
            msg = Message(f"{p}-{i}".encode())
            sent.add(msg.id)
            await bus.publish(topic, msg)

    async def kill_publishing_backends() -> None:
        nonlocal killed
        while len(sent) < 1000:
            await asyncio.sleep(0.005)
        admin = await asyncpg.connect(BASE)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query LIKE $1",
                f"COPY {table}%",
            )
        finally:
            await admin.close()

    await asyncio.gather(kill_publishing_backends(), *(produce(p) for p in range(20)))
    assert killed >= 1, "no publishing backend was found to kill"
    assert await collect_ids(sub, sent, timeout=30) >= sent
    await bus.close()


async def test_a_lone_publish_commits_in_the_callers_task(schema: str) -> None:
    bus = PostgresPubSub.from_url(url(schema))
    await bus.start()
    topic = unique("t")
    await bus.publish(topic, Message(b"creates the topic"))
    sent = msgs(20)
    with tasks_created() as created:
        for m in sent:
            await bus.publish(topic, m)
    assert created == [], "an awaited publish on an idle bus starts no task"
    sub = await bus.subscribe(topic, group=unique("g"))
    got = await collect(sub, len(sent) + 1)
    assert [m.id for m in got[1:]] == [m.id for m in sent]
    await bus.close()


async def test_concurrent_publishers_share_transactions_evenly(schema: str) -> None:
    """100 publishers awaiting one message at a time: the two publish transactions in
    flight take about half the queued calls each, rather than one carrying a lone call
    round after round beside a batch of all the others."""
    bus = PostgresPubSub.from_url(url(schema))
    await bus.start()
    topic = unique("t")
    await bus.publish(topic, Message(b"creates the topic"))
    sizes: list[int] = []
    insert_rows = bus._publishing._insert_rows

    async def counted(rows: list[Row], conn: Connection) -> None:
        sizes.append(len(rows))
        await insert_rows(rows, conn)

    bus._publishing._insert_rows = counted  # type: ignore[method-assign]

    async def publisher() -> None:
        for _ in range(20):
            await bus.publish(topic, Message(b"x"))

    await asyncio.gather(*(publisher() for _ in range(100)))
    await bus.close()
    assert sum(sizes) == 2_000
    # While (nearly) all publishers are still at it: at the end the last ones finish
    # one by one and their transactions are small by nature (more so on a slow machine)
    steady, done = [], 0
    for n in sizes:
        if done >= 1_600:
            break
        steady.append(n)
        done += n
    small = [n for n in steady if n < 10]
    assert len(small) <= len(steady) // 10, f"transactions of under 10 rows: {sizes}"


async def test_a_lone_publish_survives_its_kept_connection_dying_while_idle(schema: str) -> None:
    """Inline publishes keep their connection between calls; one ended by the server
    while idle (asyncpg then takes it back from its holder) is replaced, not used."""
    bus = PostgresPubSub.from_url(url(schema))
    await bus.start()
    topic = unique("t")
    await bus.publish(topic, Message(b"before"))
    admin = await asyncpg.connect(BASE)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query LIKE $1",
            f"%INSERT INTO {bus.sql.table('messages')}%",
        )
        assert killed >= 1
        async with asyncio.timeout(10):  # the kept connection has seen its end
            while await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> "
                "pg_backend_pid()",
                f"%INSERT INTO {bus.sql.table('messages')}%",
            ):
                await asyncio.sleep(0.02)
        await asyncio.sleep(0)
    finally:
        await admin.close()
    await bus.publish(topic, Message(b"after"))
    sub = await bus.subscribe(topic, group=unique("g"))
    assert [m.payload for m in await collect(sub, 2)] == [b"before", b"after"]
    await bus.close()


async def test_a_new_topic_is_created_while_every_pool_connection_publishes(schema: str) -> None:
    """With pool_max=1, a stream of publishes must not keep the only connection from
    the creation of a new topic (workers keep no connection then)."""
    bus = PostgresPubSub.from_url(
        url(schema, pool_max=1, pool_min=1, publish_workers=1, publish_batch=5)
    )
    await bus.start()
    busy, fresh = unique("t"), unique("t")
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            await bus.publish(busy, Message(b"x"))

    streams = [asyncio.create_task(stream()) for _ in range(10)]
    try:
        await asyncio.sleep(0.2)
        await asyncio.wait_for(bus.publish(fresh, Message(b"new")), 10)  # hang guard
    finally:
        stop.set()
        await asyncio.gather(*streams)
    sub = await bus.subscribe(fresh, group=unique("g"))
    assert [m.payload for m in await collect(sub, 1)] == [b"new"]
    await bus.close()


async def test_large_and_small_publish_calls_arrive_intact_and_in_order(schema: str) -> None:
    """Both insert paths (COPY for big batches, INSERT for small ones) keep every field.

    One call of 60 messages, then 3 single-message calls, then 20 concurrent calls
    (group-committed together): a single member sees the sequential calls in order
    and every id, metadata and payload unchanged.
    """
    bus = await open_pubsub(url(schema))
    topic = unique("t")
    sub = await bus.subscribe(topic, group=unique("g"))
    big = [
        Message(bytes([i]) * i, {"i": str(i), "text": "héllo ✓"} if i % 2 else {})
        for i in range(60)
    ]
    await bus.publish(topic, *big)
    singles = [Message(f"single-{i}".encode(), {"n": str(i)}) for i in range(3)]
    for m in singles:
        await bus.publish(topic, m)
    burst = [Message(f"burst-{i}".encode(), {"b": str(i)}) for i in range(20)]
    await asyncio.gather(*(bus.publish(topic, m) for m in burst))
    got = await collect(sub, len(big) + len(singles) + len(burst))
    expected = {m.id: m for m in [*big, *singles, *burst]}
    assert [m.id for m in got[: len(big) + len(singles)]] == [m.id for m in [*big, *singles]]
    assert {m.id for m in got} == set(expected)
    for m in got:
        assert (m.payload, m.metadata) == (expected[m.id].payload, expected[m.id].metadata)
    await sub.close()
    await bus.close()


async def test_group_created_while_publishing_misses_nothing(schema: str) -> None:
    bus = await open_pubsub(url(schema))
    other = await open_pubsub(url(schema))
    topic = unique("t")
    sent: list[str] = []
    stop = asyncio.Event()

    async def produce(b: PubSub) -> None:
        while not stop.is_set():
            m = Message(b"x")
            await b.publish(topic, m)
            sent.append(m.id)

    producers = [asyncio.create_task(produce(b)) for b in (bus, other, bus)]
    await asyncio.sleep(0.2)
    subs = [await bus.subscribe(topic, group=unique("late")) for _ in range(3)]
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*producers)
    for sub in subs:
        await collect_ids(sub, set(sent))
    await bus.close()
    await other.close()


# -- NOTIFY wake-ups (a huge poll interval: only NOTIFY or a lease timer can wake) ----


async def test_notify_wakes_an_idle_group_consumer(schema: str) -> None:
    bus = await open_pubsub(url(schema, poll_interval=3600))
    publisher = await open_pubsub(url(schema, poll_interval=3600))
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    waiting = asyncio.create_task(anext(sub))
    await asyncio.sleep(0.3)  # the consumer found nothing and went to sleep
    assert not waiting.done()
    sent = Message(b"wake up")
    await publisher.publish(topic, sent)
    got = await asyncio.wait_for(waiting, 10)
    assert got.id == sent.id
    got.nack()  # nack wakes it too
    (again,) = await collect(sub, 1, timeout=10)
    assert again.id == sent.id
    await bus.close()
    await publisher.close()


async def test_notify_feeds_ephemeral_subscribers_of_another_bus(schema: str) -> None:
    bus = await open_pubsub(url(schema, poll_interval=3600))
    publisher = await open_pubsub(url(schema, poll_interval=3600))
    topic = unique("t")
    sub = await bus.subscribe(topic)
    sent = msgs(30)
    await publisher.publish(topic, *sent[:10])
    await publisher.publish(topic, *sent[10:])
    got = await collect(sub, 30, timeout=10)
    assert [m.id for m in got] == [m.id for m in sent]
    await bus.close()
    await publisher.close()


async def test_ephemeral_subscription_misses_nothing_while_its_listen_connection_is_down(
    schema: str,
) -> None:
    """NOTIFYs only wake: messages committed while no NOTIFY can arrive still come,
    in order, once the LISTEN connection is back."""
    bus = await open_pubsub(url(schema, poll_interval=3600))
    publisher = await open_pubsub(url(schema))
    assert isinstance(bus, PostgresPubSub)
    topic = unique("t")
    sub = await bus.subscribe(topic)
    listen_pid = bus._wakeups.connection.get_server_pid()
    killer = await asyncpg.connect(BASE)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", listen_pid)
    finally:
        await killer.close()
    sent = msgs(20)
    for m in sent:
        await publisher.publish(topic, m)
    got = await collect(sub, 20, timeout=15)
    assert [m.id for m in got] == [m.id for m in sent]
    assert bus._wakeups.connection is not None
    assert bus._wakeups.connection.get_server_pid() != listen_pid, "LISTEN was not re-established"
    await bus.close()
    await publisher.close()


async def test_ephemeral_subscription_sees_only_what_commits_after_subscribe(
    schema: str,
) -> None:
    bus = await open_pubsub(url(schema))
    topic = unique("t")
    first = await bus.subscribe(topic)
    before = msgs(5)
    await bus.publish(topic, *before)
    await collect(first, 5)
    second = await bus.subscribe(topic)  # joins a topic reader already running
    after = msgs(5)
    await bus.publish(topic, *after)
    got = await collect(second, 5)
    assert [m.id for m in got] == [m.id for m in after]
    await nothing_arrives(second, 0.3)
    assert [m.id for m in await collect(first, 5)] == [m.id for m in after]
    await bus.close()


async def test_ephemeral_subscription_joining_as_the_last_one_leaves_still_gets_messages(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The topic's reader must not stop while a subscription is joining it."""
    bus = await open_pubsub(url(schema))
    assert isinstance(bus, PostgresPubSub)
    topic = unique("t")
    leaving = await bus.subscribe(topic)
    taking_snapshot = asyncio.Event()
    proceed = asyncio.Event()
    real_snapshot = bus._snapshot

    async def slow_snapshot() -> object:
        taking_snapshot.set()
        await proceed.wait()
        return await real_snapshot()

    monkeypatch.setattr(bus, "_snapshot", slow_snapshot)
    joining = asyncio.create_task(bus.subscribe(topic))
    await taking_snapshot.wait()
    await leaving.close()  # the last member leaves while the next one joins
    proceed.set()
    sub = await joining
    sent = Message(b"for the newcomer")
    await bus.publish(topic, sent)
    (got,) = await collect(sub, 1, timeout=10)
    assert got.id == sent.id
    await bus.close()


async def test_expired_lease_wakes_an_idle_consumer(schema: str) -> None:
    topic, group = unique("t"), unique("g")
    victim = await open_pubsub(url(schema, poll_interval=3600))
    survivor = await open_pubsub(url(schema, poll_interval=3600))
    sub = await victim.subscribe(topic, group=group)
    await victim.publish(topic, Message(b"held"))
    (held,) = await collect(sub, 1, ack=False)
    waiting = await survivor.subscribe(topic, group=group)
    assert isinstance(victim, PostgresPubSub)
    await victim.abort()
    (back,) = await collect(waiting, 1, timeout=VISIBILITY + 10)
    assert back.id == held.id
    await survivor.close()


async def test_live_consumer_keeps_its_lease_past_the_visibility_timeout(schema: str) -> None:
    bus = await open_pubsub(url(schema, visibility_timeout=0.6))
    other = await open_pubsub(url(schema, visibility_timeout=0.6))
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    await bus.publish(topic, Message(b"slow work"))
    (held,) = await collect(sub, 1, ack=False)
    rival = await other.subscribe(topic, group=group)
    await nothing_arrives(rival, 2.0)  # > 3 visibility timeouts: renewed, not redelivered
    held.ack()
    await bus.close()
    await other.close()


# -- retention, schema, options, errors --------------------------------------------------


async def test_retention_deletes_only_fully_consumed_messages(schema: str) -> None:
    bus = PostgresPubSub.from_url(url(schema, retention=0, cleanup_interval=3600))
    await bus.start()
    topic = unique("t")
    fast = await bus.subscribe(topic, group=unique("fast"))
    slow = await bus.subscribe(topic, group=unique("slow"))
    sent = msgs(10)
    await bus.publish(topic, *sent)
    await collect(fast, 10)
    await collect(slow, 4)
    await bus.flush_settlements()
    await bus.run_retention()
    count = f"SELECT count(*) FROM {bus.sql.table('messages')} WHERE tid = $1"
    async with bus._runner.pool.acquire() as conn:
        left = await conn.fetchval(count, bus._tids[topic])
    assert left == 6, "messages the slow group still needs must stay"
    await collect(slow, 6)
    await bus.flush_settlements()
    await bus.run_retention()
    async with bus._runner.pool.acquire() as conn:
        assert await conn.fetchval(count, bus._tids[topic]) == 0
    await bus.close()


async def _blocks_touched(conn: asyncpg.Connection, query: str, *args: object) -> int:
    """Shared buffers the statement touches (its plan's total, nested SQL included)."""
    plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *args)
    top = json.loads(plan)[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def test_reads_past_a_long_consumed_log_touch_only_its_end(schema: str) -> None:
    """A claim, an ephemeral read and the idle checks start at the cursor, not at the
    topic's first retained message, and a retention pass with nothing to delete stops
    at the first message still within retention: each touches the same few pages
    however long the log is (before, each scanned every index entry of the topic).
    Measured in the bus's consuming session settings (planner kept on indexes)."""
    # Tables of its own: a retention pass visits every topic (a few pages each).
    bus = PostgresPubSub.from_url(url(schema, table_prefix=f"long{uuid.uuid4().hex[:6]}_"))
    await bus.start()
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    behind = 40_000  # ~180 leaf pages of the log's index
    for _ in range(behind // 5_000):
        await bus.publish(topic, *(Message(b"x") for _i in range(5_000)))
    await collect(sub, behind, timeout=60)
    await sub.close()
    await bus.publish(topic, Message(b"new"))
    tid, sql = bus._tids[topic], bus.sql
    gid = bus._gids[(tid, group)]
    async with bus._runner.pool.acquire() as conn:
        last = await conn.fetchrow(
            f"SELECT txid, seq FROM {sql.table('messages')} WHERE tid = $1 "
            "ORDER BY txid DESC, seq DESC OFFSET 1 LIMIT 1",
            tid,
        )
    dsn = bus.config.dsn
    await bus.close()
    for statement, args in (
        (sql.claim, (gid, tid, 500, 30.0)),
        (sql.idle_state, (gid,)),
        (sql.read_after, (tid, last["txid"], last["seq"], 1000)),
        (sql.exists_after, (tid, last["txid"], last["seq"])),
        (sql.retention, (3600.0, 5000)),  # everything consumed, nothing old enough
    ):
        # A new session: custom plans, then (from the 6th run) the generic one. The
        # first run also reads the catalogs (compiling, planning): not counted.
        conn = await asyncpg.connect(dsn, server_settings=CONSUMER_SETTINGS)  # the bus's
        try:
            touched = [await _blocks_touched(conn, statement, *args) for _ in range(8)][1:]
        finally:
            await conn.close()
        assert max(touched) < 40, (statement.split("(")[0], touched)


async def test_schema_creation_is_idempotent_under_concurrent_starts() -> None:
    require_service("PostgreSQL", HOST, PORT)
    fresh = f"emt_{uuid.uuid4().hex[:10]}"
    buses = [PostgresPubSub.from_url(url(fresh, table_prefix="bus_")) for _ in range(4)]
    try:
        await asyncio.gather(*(b.start() for b in buses))
        topic = unique("t")
        sub = await buses[0].subscribe(topic, group="g")
        await buses[3].publish(topic, Message(b"ok"))
        (got,) = await collect(sub, 1)
        assert got.payload == b"ok"
        async with buses[0]._runner.pool.acquire() as conn:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                fresh,
            )
        assert {r["table_name"] for r in tables} == {
            "bus_topics",
            "bus_messages",
            "bus_groups",
            "bus_leases",
        }
    finally:
        for b in buses:
            await b.close()
        conn = await asyncpg.connect(BASE)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        await conn.close()


async def test_table_prefixes_isolate_buses(schema: str) -> None:
    a = await open_pubsub(url(schema, table_prefix="a_"))
    b = await open_pubsub(url(schema, table_prefix="b_"))
    topic = unique("t")
    sub_b = await b.subscribe(topic, group="g")
    await a.publish(topic, Message(b"for a only"))
    await nothing_arrives(sub_b, 0.5)
    await a.close()
    await b.close()


def test_url_options_are_parsed() -> None:
    cfg = PostgresConfig.from_url(
        "postgres://app:s3cret@db.example:6543/bus?schema=ev&table_prefix=q_"
        "&visibility_timeout=45&poll_interval=0.5&prefetch=7&publish_batch=300"
        "&publish_workers=3&max_pending=900&ack_interval=0.01&ack_batch=50&retention=unlimited"
        "&claim_linger=0"
        "&cleanup_interval=5&ephemeral_buffer=20&pool_min=0&pool_max=4&connect_timeout=3"
        "&reconnect_timeout=9&reconnect_max_delay=1&sslmode=disable&application_name=svc"
    )
    assert cfg == PostgresConfig(
        dsn="postgresql://app:s3cret@db.example:6543/bus?sslmode=disable&application_name=svc",
        schema="ev",
        table_prefix="q_",
        visibility_timeout=45.0,
        poll_interval=0.5,
        prefetch=7,
        publish_batch=300,
        publish_workers=3,
        max_pending=900,
        ack_interval=0.01,
        ack_batch=50,
        claim_linger=0.0,
        retention=None,
        cleanup_interval=5.0,
        ephemeral_buffer=20,
        pool_min=0,
        pool_max=4,
        connect_timeout=3.0,
        reconnect_timeout=9.0,
        reconnect_max_delay=1.0,
    )
    assert PostgresConfig.from_url("postgresql+asyncpg://h/db?retention=60").retention == 60.0
    assert PostgresConfig.from_url("postgresql://h/db") == PostgresConfig(dsn="postgresql://h/db")


@pytest.mark.parametrize(
    "query",
    [
        "bogus=1",
        "schema=Bad-Name",
        "table_prefix=1x",
        "visibility_timeout=0",
        "poll_interval=-1",
        "prefetch=0",
        "prefetch=many",
        "retention=-5",
        "pool_min=5&pool_max=2",
        "ack_interval=nan",
        "claim_linger=-1",
    ],
)
def test_bad_options_are_configuration_errors(query: str) -> None:
    with pytest.raises(ConfigurationError):
        PostgresConfig.from_url(f"postgresql://u:hunter2@h/db?{query}")


async def test_open_pubsub_accepts_both_schemes(schema: str) -> None:
    for scheme in ("postgresql", "postgres"):
        bus = await open_pubsub(url(schema).replace("postgresql", scheme, 1))
        assert isinstance(bus, PostgresPubSub)
        await bus.close()


async def test_unreachable_server_error_hides_the_password() -> None:
    dead = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/db?connect_timeout=0.3"
    with pytest.raises(BackendUnavailableError) as info:
        await open_pubsub(dead)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)
    with pytest.raises(ConfigurationError) as bad:
        await open_pubsub("postgresql://app:hunter2@h/db?nope=1")
    assert "hunter2" not in str(bad.value)


async def test_a_server_that_never_answers_is_given_up_after_connect_timeout() -> None:
    """A listener that accepts connections and never says a word (a hung server, a
    wrong port behind a proxy): open_pubsub gives up after connect_timeout, not after
    asyncpg's own 60 s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(BackendUnavailableError):
            await open_pubsub(f"postgresql://app@127.0.0.1:{port}/db?connect_timeout=1")
    finally:
        silent.close()
    assert loop.time() - started < 30  # (asyncpg alone: 60 s per attempt)


async def test_publish_gives_up_after_reconnect_timeout(
    throwaway_server: _postgres_server.PostgresServer,
) -> None:
    bus = await open_pubsub(throwaway_server.url + "?reconnect_timeout=1")
    await bus.publish("t", Message(b"up"))
    await asyncio.to_thread(throwaway_server.stop)
    with pytest.raises(BackendUnavailableError) as info:
        await bus.publish("t", Message(b"down"))
    assert "publish" in str(info.value)
    await asyncio.to_thread(throwaway_server.start)
    await bus.publish("t", Message(b"up again"))
    await bus.close()


async def test_listen_connection_comes_back_after_server_restart(
    throwaway_server: _postgres_server.PostgresServer,
) -> None:
    """With a huge poll interval, only a re-established LISTEN can wake these consumers."""
    bus = await open_pubsub(throwaway_server.url + "?poll_interval=3600")
    publisher = await open_pubsub(throwaway_server.url)
    topic = unique("t")
    group_sub = await bus.subscribe(topic, group="g")
    ephemeral = await bus.subscribe(topic)
    waiting = asyncio.create_task(anext(group_sub))
    await asyncio.sleep(0.2)
    await throwaway_server.restart(0.5)
    sent: list[Message] = []

    async def publish_until_seen() -> Message:
        # Messages published before the LISTEN is back are lost to the ephemeral
        # subscription (by contract), so keep publishing until one arrives.
        receiving = asyncio.create_task(anext(ephemeral))
        while not receiving.done():
            m = Message(b"after restart")
            sent.append(m)
            await publisher.publish(topic, m)
            await asyncio.wait({receiving}, timeout=0.2)
        return receiving.result()

    got = await asyncio.wait_for(publish_until_seen(), 30)
    assert got.id in {m.id for m in sent}
    first = await asyncio.wait_for(waiting, 30)
    assert first.id == sent[0].id
    await bus.close()
    await publisher.close()


async def test_a_restart_logs_one_line_and_asyncpg_lines_can_be_silenced(
    throwaway_server: _postgres_server.PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Claims, acks, lease renewals, the LISTEN connection and publishes meet the same
    outage: eventmill says once that the server is unreachable, and once that it is
    back; asyncpg's own lines (its pool refilling) go to "asyncpg"."""
    bus = await open_pubsub(throwaway_server.url + "?poll_interval=0.2&reconnect_max_delay=0.2")
    try:
        await outage_is_logged_once(
            caplog,
            bus,
            lambda: throwaway_server.restart(1.0),
            backend_logger="eventmill.pubsub.postgres",
            client_logger="asyncpg",
        )
    finally:
        await bus.close()
