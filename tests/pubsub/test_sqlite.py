"""sqlite:/// runs the conformance suite, plus a SIGKILL test, group commit, retention, options."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from eventmill import (
    BackendUnavailableError,
    ClosedError,
    ConfigurationError,
    Message,
    PublishError,
    open_pubsub,
)
from eventmill.pubsub.base import Capabilities, PubSub, Subscription
from eventmill.pubsub.sqlite import SQLiteConfig, SQLitePubSub, SQLiteSubscription
from tests.pubsub.conformance import (
    ConformanceSuite,
    Harness,
    collect,
    msgs,
    nothing_arrives,
    unique,
)

VISIBILITY = 1.0
CHILD = Path(__file__).with_name("_sqlite_child.py")


async def open_bus(path: Path, **options: Any) -> SQLitePubSub:
    """A started bus on ``path`` with the short timeouts the tests use."""
    options.setdefault("visibility_timeout", VISIBILITY)
    options.setdefault("poll_interval", 0.05)
    bus = SQLitePubSub(SQLiteConfig(path=str(path), **options))
    await bus.start()
    return bus


class SQLiteHarness(Harness):
    redelivery_timeout = VISIBILITY
    long_reads = {"poll_interval": "5"}

    def __init__(self, path: Path, synchronous: str = "full") -> None:
        super().__init__()
        self.path = path
        self.synchronous = synchronous

    @property
    def capabilities(self) -> Capabilities:
        return SQLitePubSub.capabilities

    async def _open(self) -> PubSub:
        return await self._open_with({})

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        query = {
            "visibility_timeout": str(VISIBILITY),
            "poll_interval": "0.05",
            "synchronous": self.synchronous,
            **options,
        }
        url = f"sqlite:///{self.path}?" + "&".join(f"{k}={v}" for k, v in query.items())
        ps = SQLitePubSub.from_url(url)
        await ps.start()
        return ps

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        assert isinstance(sub, SQLiteSubscription)
        await sub.flush()

    async def crash(self, ps: PubSub) -> None:
        assert isinstance(ps, SQLitePubSub)
        await ps.abort()


class TestSQLiteConformance(ConformanceSuite):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        h = SQLiteHarness(tmp_path / "bus.db")
        yield h
        await h.aclose()


class TestSQLiteConformanceSynchronousNormal(ConformanceSuite):
    """``synchronous=normal`` publishes on the event loop's thread (inline commits)."""

    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[Harness]:
        h = SQLiteHarness(tmp_path / "bus.db", synchronous="normal")
        yield h
        await h.aclose()


# -- a real process killed while holding unacked messages ------------------------------


async def test_sigkilled_consumer_messages_are_redelivered_to_a_new_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kill.db"
    topic, group = unique("t"), unique("g")
    bus = await open_bus(path)
    await bus.subscribe(topic, group=group)  # create the group before publishing
    sent = msgs(10)
    await bus.publish(topic, *sent)
    await bus.close()

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(path),
        topic,
        group,
        "10",
        "4",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        report = json.loads(line)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    held, acked = set(report["held"]), set(report["acked"])
    assert len(held) == 6
    assert held | acked == {m.id for m in sent}

    survivor = await open_bus(path)
    sub = await survivor.subscribe(topic, group=group)
    back = await collect(sub, 6)
    assert {m.id for m in back} == held, "exactly the unacked messages come back"
    await nothing_arrives(sub, 2 * VISIBILITY)  # the acked ones stay acked
    later = msgs(3, "later")
    await survivor.publish(topic, *later)
    assert [m.id for m in await collect(sub, 3)] == [m.id for m in later]
    await survivor.close()


PUBLISHER = """
import asyncio, sys
from eventmill import Message
from eventmill.pubsub.sqlite import SQLitePubSub

async def main() -> None:
    bus = SQLitePubSub.from_url(sys.argv[1])
    await bus.start()
    await bus.publish(sys.argv[2], *(Message(f"{i}".encode(), id=f"x-{i}") for i in range(5)))
    await bus.close()

asyncio.run(main())
"""


async def test_messages_published_by_another_process_are_delivered(tmp_path: Path) -> None:
    path = tmp_path / "xproc.db"
    topic = unique("t")
    bus = await open_bus(path)
    grouped = await bus.subscribe(topic, group=unique("g"))
    ephemeral = await bus.subscribe(topic)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER,
        f"sqlite:///{path}",
        topic,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    want = [f"x-{i}" for i in range(5)]
    assert [m.id for m in await collect(grouped, 5)] == want
    assert [m.id for m in await collect(ephemeral, 5)] == want
    await bus.close()


async def test_live_consumer_keeps_its_lease_past_the_visibility_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "renew.db"
    topic, group = unique("t"), unique("g")
    slow_bus, other_bus = await open_bus(path), await open_bus(path)
    slow = await slow_bus.subscribe(topic, group=group)
    await slow_bus.publish(topic, Message(b"slow work"))
    (held,) = await collect(slow, 1, ack=False)
    other = await other_bus.subscribe(topic, group=group)
    await nothing_arrives(other, 3 * VISIBILITY)  # renewed, not redelivered
    await slow.close()  # released unacked: the other member gets it at once
    (again,) = await collect(other, 1)
    assert again.id == held.id
    await slow_bus.close()
    await other_bus.close()


# -- group commit ------------------------------------------------------------------------


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_group_commit_coalesces_and_returns_only_after_commit(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "gc.db"
    bus = await open_bus(path, busy_timeout=60, synchronous=synchronous)
    topic = unique("t")
    await bus.publish(topic, Message(b"warm-up"))
    before = bus.stats.transactions
    blocker = sqlite3.connect(path, isolation_level=None)
    observer = sqlite3.connect(path, isolation_level=None)

    def committed(mid: str) -> int:
        sql = "SELECT COUNT(*) FROM eventmill_messages WHERE id = ?"
        rows = observer.execute(sql, (mid,)).fetchall()
        return int(rows[0][0])

    seen_at_return: dict[str, int] = {}

    async def publisher(i: int) -> None:
        m = Message(f"m{i}".encode(), id=f"{topic}-{i}")
        await bus.publish(topic, m)
        seen_at_return[m.id] = committed(m.id)  # another connection, right at return

    try:
        blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: nothing can commit
        tasks = [asyncio.create_task(publisher(i)) for i in range(100)]
        await asyncio.sleep(0.3)  # every publish is queued behind the lock
        assert not any(t.done() for t in tasks), "a publish returned before its commit"
        assert not any(committed(f"{topic}-{i}") for i in range(100))
        blocker.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        blocker.close()
    assert seen_at_return == {f"{topic}-{i}": 1 for i in range(100)}
    # The first transaction may have taken only the first call; the rest ride one more.
    assert bus.stats.transactions - before <= 2
    observer.close()
    await bus.close()


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_publish_waits_when_max_pending_messages_are_queued(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "pending.db"
    bus = await open_bus(path, max_pending=10, busy_timeout=60, synchronous=synchronous)
    topic = unique("t")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.create_task(bus.publish(topic, *msgs(10, "first")))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(bus.publish(topic, Message(b"second")))
        await asyncio.sleep(0.2)
        assert not first.done()
        assert not second.done()
        assert bus._pending == 10, "the second publish was queued beyond max_pending"
        blocker.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(first, second), 60)
    finally:
        blocker.close()
    assert _count(path, topic) == 11
    # One call larger than max_pending is never split, and still goes through.
    await bus.publish(topic, *msgs(25, "big"))
    assert _count(path, topic) == 36
    await bus.close()


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_each_publish_call_is_committed_contiguously_in_order(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "order.db"
    bus = await open_bus(path, synchronous=synchronous)
    topic = unique("t")
    calls = [msgs(10, f"c{c}") for c in range(50)]
    await asyncio.gather(*(bus.publish(topic, *batch) for batch in calls))
    await bus.close()
    with contextlib.closing(sqlite3.connect(path)) as con:
        rows = con.execute(
            "SELECT id FROM eventmill_messages WHERE topic = ? ORDER BY seq", (topic,)
        ).fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == 500
    for batch in calls:
        start = ids.index(batch[0].id)
        assert ids[start : start + 10] == [m.id for m in batch]


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_close_waits_for_publishes_in_progress(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "graceful.db"
    bus = await open_bus(path, synchronous=synchronous)
    topic = unique("t")
    tasks = [asyncio.create_task(bus.publish(topic, *msgs(5, f"p{i}"))) for i in range(40)]
    await asyncio.sleep(0)  # every publish is handed to the writer
    await bus.close()
    await asyncio.gather(*tasks)  # none failed
    assert _count(path, topic) == 200


async def test_ephemeral_nack_delivers_again_to_the_same_subscription(tmp_path: Path) -> None:
    bus = await open_bus(tmp_path / "eph.db")
    topic = unique("t")
    sub = await bus.subscribe(topic)
    await bus.publish(topic, Message(b"again", id="again"))
    (first,) = await collect(sub, 1, ack=False)
    first.nack()
    (second,) = await collect(sub, 1)
    assert second.id == "again"
    assert second.payload == b"again"
    await bus.close()


# -- retention ---------------------------------------------------------------------------


async def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


def _count(path: Path, topic: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as con:
        sql = "SELECT COUNT(*) FROM eventmill_messages WHERE topic = ?"
        return int(con.execute(sql, (topic,)).fetchall()[0][0])


async def test_retention_deletes_only_what_every_group_acked(tmp_path: Path) -> None:
    path = tmp_path / "ret.db"
    bus = await open_bus(path, retention=0, sweep_interval=0.05)
    topic = unique("t")
    fast = await bus.subscribe(topic, group="fast")
    slow = await bus.subscribe(topic, group="slow")
    await bus.publish(topic, *msgs(20))
    await collect(fast, 20)
    slow_got = await collect(slow, 20, ack=False)
    for m in slow_got[:10]:
        m.ack()
    await fast.flush()
    await slow.flush()
    sweeps = bus.stats.sweeps
    await _wait_until(lambda: bus.stats.sweeps >= sweeps + 2, "two sweeps ran")
    assert _count(path, topic) == 10, "a message the slow group holds was deleted"
    for m in slow_got[10:]:
        m.ack()
    await slow.flush()
    await _wait_until(lambda: _count(path, topic) == 0, "acked messages were not deleted")
    # A new group starts at the oldest retained message: only what comes next.
    await bus.publish(topic, Message(b"after sweep", id="after"))
    late = await bus.subscribe(topic, group="late")
    (got,) = await collect(late, 1)
    assert got.id == "after"
    await bus.close()


async def test_retention_forever_keeps_acked_messages(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    bus = await open_bus(path, retention=None, sweep_interval=0.05)
    topic = unique("t")
    sub = await bus.subscribe(topic, group="g")
    await bus.publish(topic, *msgs(5))
    await collect(sub, 5)
    await sub.flush()
    sweeps = bus.stats.sweeps
    await _wait_until(lambda: bus.stats.sweeps >= sweeps + 2, "two sweeps ran")
    assert _count(path, topic) == 5
    await bus.close()


async def test_max_age_deletes_unacked_messages_of_an_abandoned_group(tmp_path: Path) -> None:
    path = tmp_path / "age.db"
    topic = unique("t")
    gone = await open_bus(path, prefetch=2)
    held = await gone.subscribe(topic, group="abandoned")
    await gone.publish(topic, *msgs(5))
    await collect(held, 2, ack=False)  # two leased to a consumer that dies, three wait
    await gone.abort()
    bus = await open_bus(path, retention=None, max_age=0.2, sweep_interval=0.05)
    await _wait_until(lambda: _count(path, topic) == 0, "old messages were not deleted")
    with contextlib.closing(sqlite3.connect(path)) as con:
        sql = "SELECT COUNT(*) FROM eventmill_leases WHERE topic = ?"
        assert con.execute(sql, (topic,)).fetchall()[0][0] == 0, "orphan leases remain"
    sub = await bus.subscribe(topic, group="abandoned")
    fresh = Message(b"fresh")
    await bus.publish(topic, fresh)
    (got,) = await collect(sub, 1)
    assert got.id == fresh.id
    await bus.close()


# -- options and errors ------------------------------------------------------------------


async def test_open_pubsub_parses_options(tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path}/opts.db?synchronous=NORMAL&visibility_timeout=5&poll_interval=0.2"
        "&prefetch=7&retention=unlimited&max_age=1d&sweep_interval=3&busy_timeout=2"
        "&max_batch=500&max_pending=1000"
    )
    bus = await open_pubsub(url)
    assert isinstance(bus, SQLitePubSub)
    assert bus.config == SQLiteConfig(
        path=str(tmp_path / "opts.db"),
        synchronous="normal",
        visibility_timeout=5.0,
        poll_interval=0.2,
        prefetch=7,
        retention=None,
        max_age=86400.0,
        sweep_interval=3.0,
        busy_timeout=2.0,
        max_batch=500,
        max_pending=1000,
    )
    await bus.publish(unique("t"), Message(b"x"))
    await bus.close()
    assert (tmp_path / "opts.db").exists()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///bus.db", "bus.db"),
        ("sqlite:///data/bus.db", "data/bus.db"),
        ("sqlite:////var/lib/eventmill/bus.db", "/var/lib/eventmill/bus.db"),
        ("sqlite:///my%20bus.db", "my bus.db"),
    ],
)
def test_url_paths_follow_the_sqlalchemy_convention(url: str, path: str) -> None:
    assert SQLiteConfig.from_url(url) == SQLiteConfig(path=path)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://", "needs a database file"),
        ("sqlite:///", "needs a database file"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://host/bus.db", "host part"),
        ("sqlite:///b.db?synchronous=off", "synchronous"),
        ("sqlite:///b.db?visibility_timeout=0", "visibility_timeout"),
        ("sqlite:///b.db?visibility_timeout=soon", "visibility_timeout"),
        ("sqlite:///b.db?poll_interval=-1", "poll_interval"),
        ("sqlite:///b.db?poll_interval=nan", "poll_interval"),
        ("sqlite:///b.db?prefetch=0", "prefetch"),
        ("sqlite:///b.db?prefetch=1.5", "prefetch"),
        ("sqlite:///b.db?retention=-5", "retention"),
        ("sqlite:///b.db?max_age=0", "max_age"),
        ("sqlite:///b.db?max_batch=x", "max_batch"),
        ("sqlite:///b.db?colour=blue", "unknown sqlite:// option"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SQLitePubSub.from_url(url)


async def test_missing_directory_is_backend_unavailable(tmp_path: Path) -> None:
    bus = SQLitePubSub(SQLiteConfig(path=str(tmp_path / "no" / "such" / "dir.db")))
    with pytest.raises(BackendUnavailableError, match="cannot open") as info:
        await bus.start()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    with pytest.raises(ClosedError):
        await bus.publish(unique("t"), Message(b"x"))


async def test_file_that_is_not_a_database_is_backend_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database, just some text " * 100)
    with pytest.raises(BackendUnavailableError, match="not a database"):
        await open_pubsub(f"sqlite:///{path}")


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_locked_database_fails_publish_with_publish_error(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "locked.db"
    bus = await open_bus(path, busy_timeout=0.2, synchronous=synchronous)
    topic = unique("t")
    await bus.publish(topic, Message(b"before"))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(PublishError, match="locked") as info:
            await bus.publish(topic, Message(b"while locked"))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    await bus.publish(topic, Message(b"after"))  # the backend recovers
    assert _count(path, topic) == 2
    await bus.close()


# -- synchronous=normal: publishes committed on the event loop's thread ------------------


async def test_normal_publishes_of_one_loop_turn_share_one_inline_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inline.db"
    bus = await open_bus(path, synchronous="normal")
    topic = unique("t")
    await bus.publish(topic, Message(b"warm-up"))
    before = bus.stats.transactions
    observer = sqlite3.connect(path, isolation_level=None)
    seen_at_return: dict[str, int] = {}

    async def publisher(i: int) -> None:
        m = Message(f"m{i}".encode(), id=f"{topic}-{i}")
        await bus.publish(topic, m)
        sql = "SELECT COUNT(*) FROM eventmill_messages WHERE id = ?"
        seen_at_return[m.id] = observer.execute(sql, (m.id,)).fetchall()[0][0]

    await asyncio.gather(*(publisher(i) for i in range(100)))
    assert seen_at_return == {f"{topic}-{i}": 1 for i in range(100)}
    # One transaction, committed by the loop itself: no hand-off, so none is split.
    assert bus.stats.transactions - before == 1
    assert bus.stats.inline_transactions == 2
    assert bus.stats.messages_committed == 101
    observer.close()
    await bus.close()


async def test_full_publishes_are_committed_by_the_writer_thread(tmp_path: Path) -> None:
    bus = await open_bus(tmp_path / "full.db")  # synchronous=full: fsynced off the loop
    await asyncio.gather(*(bus.publish(unique("t"), Message(b"x")) for _ in range(10)))
    assert bus.stats.transactions >= 1
    assert bus.stats.inline_transactions == 0
    await bus.close()


async def test_locked_file_sends_normal_publishes_to_the_writer_thread(tmp_path: Path) -> None:
    path = tmp_path / "fallback.db"
    bus = await open_bus(path, synchronous="normal", busy_timeout=60)
    topic = unique("t")
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the loop must not wait for it: the writer does
        task = asyncio.create_task(bus.publish(topic, Message(b"waits", id="waits")))
        await asyncio.sleep(0.2)
        assert not task.done()
        blocker.execute("COMMIT")
        await asyncio.wait_for(task, 60)
    finally:
        blocker.close()
    assert _count(path, topic) == 1
    assert (bus.stats.transactions, bus.stats.inline_transactions) == (1, 0)
    await bus.publish(topic, Message(b"inline again"))
    assert (bus.stats.transactions, bus.stats.inline_transactions) == (2, 1)
    await bus.close()


def _wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence number: how often the log was rewound."""
    with open(f"{path}-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


async def test_inline_publishes_keep_the_wal_from_growing(tmp_path: Path) -> None:
    from eventmill._sqlite import CHECKPOINT_EVERY

    path = tmp_path / "wal.db"
    bus = await open_bus(path, synchronous="normal")
    topic = unique("t")
    await bus.publish(topic, Message(b"first"))
    rewound = _wal_restarts(path)
    payload = os.urandom(16_384)  # each commit appends more than this to the log
    commits = 12 * CHECKPOINT_EVERY
    for i in range(commits):
        await bus.publish(topic, Message(payload, id=f"w{i}"))
    wal = Path(f"{path}-wal").stat().st_size
    assert bus.stats.checkpoints >= 5
    # Each checkpoint copied the whole log and rewound it (issue 9: inline commits made
    # while it copied were not copied, the log was not rewound, and it grew past 30 MB).
    assert _wal_restarts(path) - rewound >= bus.stats.checkpoints
    # Never checkpointed, the log would hold every commit (> commits * 16 KiB); it is
    # rewound after each checkpoint instead, and stays well below that.
    assert wal < commits * 16_384 // 2, wal
    await bus.close()
    assert _count(path, topic) == commits + 1


async def test_the_writer_rewinds_the_wal_after_a_checkpoint(tmp_path: Path) -> None:
    from eventmill._sqlite import CHECKPOINT_EVERY

    path = tmp_path / "rewind.db"
    bus = await open_bus(path, synchronous="normal")
    topic = unique("t")
    await bus.publish(topic, Message(b"first"))
    before = _wal_restarts(path)
    for i in range(CHECKPOINT_EVERY - 1):  # the last of these asks for a checkpoint
        await bus.publish(topic, Message(b"x", id=f"r{i}"))
    await _wait_until(lambda: bus.stats.checkpoints == 1, "the checkpoint ran")
    # Rewound by the writer thread (whose write syncs the log's header), before any
    # inline commit on the event loop needs to.
    assert _wal_restarts(path) == before + 1
    assert bus.stats.inline_transactions == CHECKPOINT_EVERY
    await bus.publish(topic, Message(b"after"))
    assert _count(path, topic) == CHECKPOINT_EVERY + 1
    await bus.close()


# -- skip: messages a group passes over --------------------------------------------------


def _group_state(path: Path, topic: str, group: str) -> tuple[int, int, int]:
    """(cursor, leases held, highest seq of the topic)."""
    with contextlib.closing(sqlite3.connect(path)) as con:
        cursor = con.execute(
            "SELECT cursor FROM eventmill_groups WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchall()[0][0]
        leases = con.execute(
            "SELECT COUNT(*) FROM eventmill_leases WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchall()[0][0]
        top = con.execute(
            "SELECT MAX(seq) FROM eventmill_messages WHERE topic = ?", (topic,)
        ).fetchall()[0][0]
    return int(cursor), int(leases), int(top)


def _marked(n: int, prefix: str) -> list[Message]:
    return [Message(b"x", {"done": "1"}, id=f"{prefix}-{i}") for i in range(n)]


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_skip_passes_over_marked_messages_without_leasing_them(
    tmp_path: Path, synchronous: str
) -> None:
    path = tmp_path / "skip.db"
    bus = await open_bus(path, synchronous=synchronous)
    topic = unique("t")
    skipping = await bus.subscribe_skipping(topic, group="audit", skip=("done", "1"))
    everyone = await bus.subscribe(topic, group="other")
    plain = [Message(b"p", id=f"plain-{i}") for i in range(3)]
    await bus.publish(topic, *_marked(5, "a"))
    await bus.publish(topic, plain[0])
    await bus.publish(topic, Message(b"y", {"done": "0"}, id="not-done"), *_marked(2, "b"))
    await bus.publish(topic, *plain[1:])
    await bus.publish(topic, *_marked(4, "c"))
    got = await collect(skipping, 4)
    assert [m.id for m in got] == ["plain-0", "not-done", "plain-1", "plain-2"]
    await skipping.flush()
    await nothing_arrives(skipping, 0.3)
    cursor, leases, top = _group_state(path, topic, "audit")
    assert (cursor, leases) == (top, 0), "every marked message counts as acked by the group"
    # other groups get everything
    assert len(await collect(everyone, 15)) == 15
    await bus.close()


async def test_skip_applies_to_a_group_behind_its_backlog(tmp_path: Path) -> None:
    path = tmp_path / "behind.db"
    bus = await open_bus(path, prefetch=4)
    topic = unique("t")
    first = await bus.subscribe_skipping(topic, group="audit", skip=("done", "1"))
    await first.close()  # the group exists, with no member: a backlog builds up
    await bus.publish(topic, Message(b"p", id="p-0"), *_marked(10, "a"))
    await bus.publish(topic, *_marked(10, "b"), Message(b"p", id="p-1"))
    sub = await bus.subscribe_skipping(topic, group="audit", skip=("done", "1"))
    assert [m.id for m in await collect(sub, 2)] == ["p-0", "p-1"]
    await sub.flush()
    assert _group_state(path, topic, "audit")[1] == 0
    await bus.close()


async def test_skip_is_off_while_members_of_the_group_disagree(tmp_path: Path) -> None:
    path = tmp_path / "disagree.db"
    bus = await open_bus(path)
    topic = unique("t")
    skipping = await bus.subscribe_skipping(topic, group="g", skip=("done", "1"))
    plain = await bus.subscribe(topic, group="g")  # wants everything
    await bus.publish(topic, *_marked(4, "a"))
    seen: list[str] = []

    async def read(sub: Subscription) -> None:
        async for msg in sub:
            seen.append(msg.id)
            msg.ack()

    readers = [asyncio.create_task(read(sub)) for sub in (skipping, plain)]
    await _wait_until(lambda: len(seen) == 4, "the marked messages were delivered")
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    assert sorted(seen) == [f"a-{i}" for i in range(4)]
    await plain.close()
    await bus.publish(topic, *_marked(3, "b"), Message(b"p", id="p"))
    assert [m.id for m in await collect(skipping, 1)] == ["p"]
    await bus.close()


async def test_skip_needs_a_group(tmp_path: Path) -> None:
    bus = await open_bus(tmp_path / "nogroup.db")
    with pytest.raises(ValueError, match="group"):
        await bus.subscribe_skipping(unique("t"), group=None, skip=("done", "1"))  # type: ignore[arg-type]
    await bus.close()
