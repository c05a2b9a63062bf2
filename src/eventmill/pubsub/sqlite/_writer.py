"""The writer thread of the sqlite:// backend: one connection, group commit.

Every database operation of one :class:`~eventmill.pubsub.sqlite.SQLitePubSub`
goes through one :class:`Writer` thread that owns the only ``sqlite3`` connection.
The event loop hands it operations on a queue and awaits a future per operation.
The thread takes everything queued (up to ``max_batch`` messages), runs it in ONE
``BEGIN IMMEDIATE ... COMMIT`` transaction, then resolves all those futures with a
single ``call_soon_threadsafe``. While one transaction waits for its fsync, new
operations pile up and ride the next one: that is the group commit, and a publish
future is resolved only after the commit that holds its rows returned.

With ``synchronous=normal`` the owner commits publishes on the event loop's thread
itself, through :meth:`Writer.insert_publishes` on a connection of its own, and
hands them here only when the file is locked; it asks for a WAL checkpoint
(``CHECKPOINT``) every so many commits.

Settlements (ack/nack) do not carry futures: they go into a thread-safe deque
that every batch drains first, so acks are flushed in batches and a later
operation (a fetch, a release, a flush) always sees the settlements made before it.

Besides batches the thread does upkeep on a timer: renewing the leases of the live
subscriptions (every third of the visibility timeout) and the retention sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

import eventmill.pubsub.sqlite._schema as sql
from eventmill._sqlite import checkpoint
from eventmill.errors import (
    BackendUnavailableError,
)
from eventmill.message import Message
from eventmill.pubsub._errors import closed
from eventmill.pubsub.sqlite._errors import translate
from eventmill.pubsub.sqlite._ops import (
    Abort,
    Checkpoint,
    Fetch,
    Fetched,
    Flush,
    Head,
    Join,
    Op,
    Outcome,
    Publish,
    Read,
    Release,
    Row,
    Settlement,
    Stop,
    failure,
    result,
)

__all__ = ["Batch", "Writer", "WriterStats", "decode_metadata", "encode_metadata"]

log = logging.getLogger("eventmill.pubsub.sqlite")

_FAR = 2**62
_SWEEP_CHUNK = 5_000
_MAX_OPS = 5_000


def encode_metadata(metadata: dict[str, str]) -> bytes | None:
    return orjson.dumps(metadata) if metadata else None


def decode_metadata(raw: bytes | None) -> dict[str, str]:
    if not raw:
        return {}
    value: dict[str, str] = orjson.loads(raw)
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class WriterStats:
    """Counters of one writer thread (read them from any thread; they only grow)."""

    transactions: int = 0
    """Committed batch transactions (upkeep transactions are not counted)."""
    messages_committed: int = 0
    """Published messages committed."""
    inline_transactions: int = 0
    """Of the transactions, those committed on the event loop's thread (publishes
    with ``synchronous=normal``, see :meth:`SQLitePubSub.publish`)."""
    checkpoints: int = 0
    """WAL checkpoints that copied the whole log and rewound it, run for inline
    publishing (about one per :data:`~eventmill._sqlite.CHECKPOINT_EVERY` commits)."""
    sweeps: int = 0
    """Retention sweeps completed."""
    messages_deleted: int = 0
    """Messages deleted by retention."""


@dataclass(slots=True)
class Batch:
    """What one committed (or failed) batch reports back to the event loop."""

    results: list[Outcome]
    """One per operation with a future, but committed publishes: applied on the
    loop, each resolves its operation's future."""
    committed: list[asyncio.Future[None]]
    """The futures of the publishes committed (resolved with ``None``)."""
    published_topics: set[str]
    published_count: int
    requeued_topics: set[str]
    """Topics where messages became available again (nack or release)."""
    skipped: frozenset[tuple[str, str]] = frozenset()
    """(topic, group) pairs whose cursor this batch moved past every message it
    published to the topic (see :attr:`Writer.skips`): nothing new for them."""


class Writer(threading.Thread):
    """Owns the connection; runs queued operations in group-committed transactions."""

    def __init__(
        self,
        *,
        path: str,
        synchronous: str,
        busy_timeout: float,
        visibility_ms: int,
        retention_ms: int | None,
        max_age_ms: int | None,
        sweep_interval: float,
        max_batch: int,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[Batch], None],
    ) -> None:
        super().__init__(name=f"eventmill-sqlite-writer:{path}", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.visibility_ms = visibility_ms
        self.retention_ms = retention_ms
        self.max_age_ms = max_age_ms
        self.sweep_interval = sweep_interval
        self.max_batch = max_batch
        self.loop = loop
        self.on_batch = on_batch
        self.ops: queue.SimpleQueue[Op] = queue.SimpleQueue()
        #: Acks and nacks appended by the loop, drained by every batch.
        self.settlements: deque[Settlement] = deque()
        self.nudged = False
        #: Lease owners (subscription tokens) to renew; replaced, never mutated.
        self.owners: frozenset[str] = frozenset()
        #: topic -> {group: (key, value)}: groups whose subscriptions here skip the
        #: messages with that metadata (they count as acked by the group, undelivered).
        #: Replaced, never mutated.
        self.skips: dict[str, dict[str, tuple[str, str]]] = {}
        self.stats = WriterStats()
        self._stats_lock = threading.Lock()  # committed() runs on both threads
        self.ready: asyncio.Future[None] = loop.create_future()
        self._aborted = False
        #: Set once the thread no longer takes operations.
        self.done = False
        self._con: sqlite3.Connection | None = None
        self._known_topics: set[str] = set()
        self._sync_level = "normal"  # what _connect sets
        self._chunk_sql: dict[tuple[Callable[[int], str], int], str] = {}

    # -- called from the event loop ------------------------------------------------------

    def submit(self, op: Op) -> None:
        self.ops.put(op)

    def settle(self, ok: bool, topic: str, group: str, seq: int, owner: str) -> None:
        self.settlements.append((ok, topic, group, seq, owner))
        if not self.nudged:
            self.nudged = True
            self.ops.put(Flush(None))

    def abort(self) -> None:
        """Stop at once: nothing queued is run, nothing is flushed (simulates a kill)."""
        self._aborted = True
        self.ops.put(Abort())

    # -- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._con = self._connect()
        except BaseException as exc:
            err = BackendUnavailableError(f"sqlite:// cannot open {self.path!r}: {exc}")
            err.__cause__ = exc
            self.done = True
            self._post(failure(self.ready, err))
            return
        self._post(result(self.ready, None))
        stop: asyncio.Future[None] | None = None
        try:
            stop = self._serve()
        finally:
            self.done = True
            con, self._con = self._con, None
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            late: list[Op] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    late.append(self.ops.get_nowait())
            self._fail_all(late, closed("sqlite://"))
            if stop is not None:
                self._post(result(stop, None))

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout, check_same_thread=True
        )
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode!r})")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("BEGIN IMMEDIATE")
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > sql.SCHEMA_VERSION:
                    raise sqlite3.DatabaseError(
                        f"schema version {version} is newer than this eventmill "
                        f"understands ({sql.SCHEMA_VERSION})"
                    )
                for statement in sql.SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA user_version = {sql.SCHEMA_VERSION}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except BaseException:
            con.close()
            raise
        return con

    def _serve(self) -> asyncio.Future[None] | None:
        """Run batches and upkeep until STOP (returns its future) or ABORT (None)."""
        renew_every = self.visibility_ms / 3000.0
        next_renew = time.monotonic() + renew_every
        next_sweep = time.monotonic() + self.sweep_interval
        stop: asyncio.Future[None] | None = None
        while stop is None:
            timeout = max(0.0, min(next_renew, next_sweep) - time.monotonic())
            ops: list[Op] = []
            with contextlib.suppress(queue.Empty):
                ops.append(self.ops.get(timeout=timeout))
            n_msgs = 0
            while ops and len(ops) < _MAX_OPS and n_msgs < self.max_batch:
                last = ops[-1]
                if isinstance(last, Publish):
                    n_msgs += len(last.rows)
                try:
                    ops.append(self.ops.get_nowait())
                except queue.Empty:
                    break
            if self._aborted or self.loop.is_closed():
                # Killed, or the owner's event loop is gone without close(): stop
                # renewing leases so other consumers get the messages back.
                self._fail_all(ops, closed("sqlite://"))
                return None
            for op in ops:
                if isinstance(op, Stop):
                    stop = op.done
            if ops or self.settlements:
                self._run_batch(ops)
                for op in ops:
                    if isinstance(op, Checkpoint):
                        self._checkpoint(op.final, op.done)
            now = time.monotonic()
            if now >= next_renew:
                self._upkeep(self._renew)
                next_renew = now + renew_every
            if now >= next_sweep:
                self._upkeep(self._sweep)
                next_sweep = time.monotonic() + self.sweep_interval
        # Drain what raced with STOP so no future is left pending.
        rest: list[Op] = []
        with contextlib.suppress(queue.Empty):
            while True:
                rest.append(self.ops.get_nowait())
        self._fail_all(rest, closed("sqlite://"))
        return stop

    def _checkpoint(self, final: bool, fut: asyncio.Future[bool]) -> None:
        """A step of the owner's :class:`~eventmill._sqlite.Checkpoints`: copy the WAL
        into the database; ``final`` (asked for while inline publishing is paused, so
        nothing else in this process appends) rewinds it too. Resolves ``fut`` with
        whether the whole log was copied."""
        con = self._con
        assert con is not None
        try:
            self._sync(con, "normal")
            whole = checkpoint(con, rewind=final)
            if whole and final:
                self.stats.checkpoints += 1
        except sqlite3.Error as exc:
            log.warning("sqlite:// checkpoint failed: %s", exc)
            whole = False
        batch = Batch([result(fut, whole)], [], set(), 0, set())
        self._post(lambda: self.on_batch(batch))

    def _post(self, callback: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            self._aborted = True

    def _fail_all(self, ops: list[Op], exc: BaseException) -> None:
        results = [failure(fut, exc) for op in ops if (fut := _future(op)) is not None]
        if results:
            batch = Batch(results, [], set(), 0, set())
            self._post(lambda: self.on_batch(batch))

    # -- one batch -----------------------------------------------------------------------

    def _run_batch(self, ops: list[Op]) -> None:
        con = self._con
        assert con is not None
        self.nudged = False
        settled: list[Settlement] = []
        pending = self.settlements
        while pending:
            settled.append(pending.popleft())
        results: list[Outcome] = []
        published: set[str] = set()
        requeued: set[str] = set()
        new_topics: list[str] = []
        skipped: frozenset[tuple[str, str]] = frozenset()
        n_published = 0
        pubs: list[Publish] = []
        others: list[Op] = []
        for op in ops:
            if type(op) is Publish:
                pubs.append(op)
            else:
                others.append(op)
        try:
            # Publishes get the configured durability. Everything else (leases,
            # cursors, acks, releases) only decides what is delivered again, so an
            # OS crash forgetting it means redelivery, never loss: no fsync for it.
            # A later fsynced commit persists every earlier one (the log is sequential).
            self._sync(con, self.synchronous if pubs else "normal")
            con.execute("BEGIN IMMEDIATE")
            try:
                if settled:
                    self._apply_settlements(con, settled, requeued)
                if pubs:
                    new_topics, n_published, skipped = self.insert_publishes(con, pubs)
                    published = {p.topic for p in pubs}
                fetches: dict[tuple[str, str], list[Fetch]] = {}
                for op in others:
                    match op:
                        case Join(topic, group, done):
                            con.execute(sql.JOIN_GROUP, (topic, group))
                            results.append(result(done, None))
                        case Head(done):
                            results.append(result(done, con.execute(sql.HEAD).fetchone()[0]))
                        case Read(topic, after, limit, done):
                            results.append(result(done, self._read(con, topic, after, limit)))
                        case Flush(done) if done is not None:
                            results.append(result(done, None))
                        case Fetch(topic, group):
                            fetches.setdefault((topic, group), []).append(op)
                        case _:  # Release: below; Checkpoint: after COMMIT
                            pass
                if fetches:
                    now = _now_ms()
                    for (topic, group), reqs in fetches.items():
                        self._fetch(con, topic, group, reqs, now, results)
                # Releases last: a fetch of a closing subscription in this same batch
                # must not re-lease what it just gave back.
                for op in others:
                    if isinstance(op, Release):
                        cur = con.execute(sql.RELEASE, (op.owner,))
                        if cur.rowcount:
                            requeued.add(op.topic)
                        results.append(result(op.done, cur.rowcount))
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
        except Exception as exc:  # sqlite3.Error, or a row that cannot be decoded
            log.warning("sqlite:// transaction failed: %s", exc)
            # Settlements are retried with the next batch; every operation fails.
            self.settlements.extendleft(reversed(settled))
            results = [
                failure(fut, translate(op, exc))
                for op in ops
                if not isinstance(op, Stop) and (fut := _future(op)) is not None
            ]
            failed = Batch(results, [], set(), 0, set())
            self._post(lambda: self.on_batch(failed))
            return
        self.committed(new_topics, n_published)
        committed = [p.done for p in pubs]
        batch = Batch(results, committed, published, n_published, requeued, skipped)
        self._post(lambda: self.on_batch(batch))

    def committed(self, new_topics: list[str], n_published: int, *, inline: bool = False) -> None:
        """Count a committed batch transaction (the writer's or an inline one)."""
        self._known_topics.update(new_topics)
        with self._stats_lock:
            self.stats.transactions += 1
            self.stats.inline_transactions += inline
            self.stats.messages_committed += n_published

    def insert_publishes(
        self, con: sqlite3.Connection, pubs: list[Publish]
    ) -> tuple[list[str], int, frozenset[tuple[str, str]]]:
        """Insert the rows of ``pubs`` in order, inside the transaction open on ``con``
        (the writer's, or the owner's inline connection on the event loop's thread).

        Then each group of :attr:`skips` that is caught up on a topic (no message of
        the topic beyond its cursor before these) has its cursor moved past the
        leading calls whose messages it skips: what its fetch would do, without a
        fetch. Returns the topics new to this writer, the rows inserted, and the
        (topic, group) pairs moved past every row published to their topic here.
        """
        new_topics: list[str] = []
        seen: set[str] = set()
        rows: list[Row] = []
        for pub in pubs:
            topic = pub.topic
            if topic not in seen:
                seen.add(topic)
                if topic not in self._known_topics:
                    new_topics.append(topic)
            rows.extend(pub.rows)
        if new_topics:
            con.executemany(sql.INSERT_TOPIC, [(t,) for t in new_topics])
        if not rows:
            return new_topics, 0, frozenset()
        last = self._chunked(con, sql.insert_messages, rows, ())
        skips = self.skips
        if not skips or not seen & skips.keys():
            return new_topics, len(rows), frozenset()
        # Seqs are contiguous in a write transaction (AUTOINCREMENT, one writer).
        seq = last - len(rows)
        first: dict[str, int] = {}
        upto: dict[tuple[str, str], int] = {}
        blocked: set[tuple[str, str]] = set()
        ends: dict[str, int] = {}
        for pub in pubs:
            topic, op_rows, skippers = pub.topic, pub.rows, pub.skippers
            start, seq = seq + 1, seq + len(op_rows)
            if not op_rows:
                continue
            first.setdefault(topic, start)
            ends[topic] = seq
            for group in skips.get(topic, ()):
                key = (topic, group)
                if key in blocked:
                    continue
                if group in skippers:
                    upto[key] = seq
                else:
                    blocked.add(key)
        done: set[tuple[str, str]] = set()
        for (topic, group), end in upto.items():
            cur = con.execute(sql.SKIP_AHEAD, (end, topic, group, end, topic, first[topic]))
            if cur.rowcount and end == ends[topic]:
                done.add((topic, group))
        return new_topics, len(rows), frozenset(done)

    def _chunked(
        self,
        con: sqlite3.Connection,
        make: Callable[[int], str],
        rows: list[Any],
        prefix: tuple[Any, ...],
    ) -> int:
        """Run ``make(n)`` over ``rows`` in chunks of the sizes in ``INSERT_CHUNKS``,
        with ``prefix`` before the flattened parameters of each chunk (rows may be
        tuples, flattened, or single values). Returns the last statement's
        ``lastrowid`` (0 if none ran)."""
        last = 0
        start, total = 0, len(rows)
        cache = self._chunk_sql
        for size in sql.INSERT_CHUNKS:
            if total - start < size:
                continue
            stmt = cache.get((make, size))
            if stmt is None:
                stmt = cache[(make, size)] = make(size)
            while total - start >= size:
                chunk = rows[start : start + size]
                if isinstance(chunk[0], tuple):
                    params = [*prefix, *(v for row in chunk for v in row)]
                else:
                    params = [*prefix, *chunk]
                last = con.execute(stmt, params).lastrowid or 0
                start += size
        return last

    def _sync(self, con: sqlite3.Connection, level: str) -> None:
        """Set ``PRAGMA synchronous`` for the next transaction (outside any transaction)."""
        if level != self._sync_level:
            con.execute(f"PRAGMA synchronous = {level.upper()}")
            self._sync_level = level

    def _apply_settlements(
        self,
        con: sqlite3.Connection,
        settled: list[Settlement],
        requeued: set[str],
    ) -> None:
        acks: dict[tuple[str, str], list[int]] = {}
        for ok, t, g, s, _ in settled:
            if ok:
                acks.setdefault((t, g), []).append(s)
        nacks = [(t, g, s, o) for ok, t, g, s, o in settled if not ok]
        for (topic, group), seqs in acks.items():
            self._chunked(con, sql.ack_leases, seqs, (topic, group))
        if nacks:
            con.executemany(sql.NACK, nacks)
            requeued.update(t for t, _, _, _ in nacks)

    def _read(self, con: sqlite3.Connection, topic: str, after: int, limit: int) -> Fetched:
        return [
            (seq, Message._received(mid, decode_metadata(meta), payload, None))
            for seq, mid, meta, payload in con.execute(sql.NEW_MESSAGES, (topic, after, limit))
        ]

    def _fetch(
        self,
        con: sqlite3.Connection,
        topic: str,
        group: str,
        reqs: list[Fetch],
        now: int,
        results: list[Outcome],
    ) -> None:
        """Lease up to the requested number of messages, split evenly between requests.

        Messages whose lease is due (nacked, released, or held by a consumer that
        stopped renewing) come first, then new ones after the group's cursor.
        """
        total = sum(r.limit for r in reqs)
        due = con.execute(sql.DUE_LEASES, (topic, group, now, total)).fetchall()
        fresh: list[Any] = []
        if len(due) < total:
            row = con.execute(sql.GROUP_CURSOR, (topic, group)).fetchone()
            if row is None:
                con.execute(sql.JOIN_GROUP, (topic, group))
                cursor = 0
            else:
                cursor = row[0]
            start_cursor = cursor
            want = total - len(due)
            skip = self.skips.get(topic, {}).get(group)
            while True:
                ask = want - len(fresh)
                found = con.execute(sql.NEW_MESSAGES, (topic, cursor, ask)).fetchall()
                if not found:
                    break
                cursor = found[-1][0]
                if skip is None:
                    fresh = found
                    break
                # Skipped messages are passed over: no lease, as if acked at once.
                fresh.extend(r for r in found if not _skipped(r[2], skip))
                if len(found) < ask or len(fresh) >= want:
                    break
            if cursor != start_cursor:
                con.execute(sql.SET_CURSOR, (cursor, topic, group))
        rows = due + fresh
        n_due = len(due)
        until = now + self.visibility_ms
        taken: list[tuple[str, int, str, str, int]] = []
        created: list[tuple[str, str, int, str, int]] = []
        start = 0
        for i, req in enumerate(reqs):
            owner = req.owner
            share = min(req.limit, math.ceil((len(rows) - start) / (len(reqs) - i)))
            part = rows[start : start + share]
            got: Fetched = []
            for j, (seq, mid, meta, payload) in enumerate(part, start):
                if j < n_due:
                    taken.append((owner, until, topic, group, seq))
                else:
                    created.append((topic, group, seq, owner, until))
                got.append((seq, Message._received(mid, decode_metadata(meta), payload, None)))
            start += share
            results.append(result(req.done, got))
        if taken:
            con.executemany(sql.TAKE_LEASE, taken)
        if created:
            self._chunked(con, sql.insert_leases, created, ())

    # -- upkeep --------------------------------------------------------------------------

    def _upkeep(self, work: Callable[[sqlite3.Connection], None]) -> None:
        con = self._con
        assert con is not None
        try:
            self._sync(con, "normal")  # renewals and deletions: redone if forgotten
            work(con)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if con.in_transaction:
                    con.execute("ROLLBACK")
            log.warning("sqlite:// upkeep (%s) failed: %s", work.__name__, exc)

    def _renew(self, con: sqlite3.Connection) -> None:
        owners = self.owners
        if not owners:
            return
        until = _now_ms() + self.visibility_ms
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql.RENEW, [(until, o) for o in owners])
        con.execute("COMMIT")

    def _sweep(self, con: sqlite3.Connection) -> None:
        """Delete messages every group has acked (older than the retention), and,
        with ``max_age``, every message older than that; a chunk per transaction."""
        now = _now_ms()
        topics = [t for (t,) in con.execute(sql.ALL_TOPICS).fetchall()]
        deleted = 0
        for topic in topics:
            if self.retention_ms is not None:
                low = con.execute(sql.LOW_WATER, (topic,)).fetchone()[0]
                low = _FAR if low is None else low
                cutoff = now - self.retention_ms
                while True:
                    con.execute("BEGIN IMMEDIATE")
                    n = con.execute(sql.SWEEP_SETTLED, (topic, low, cutoff, _SWEEP_CHUNK)).rowcount
                    con.execute("COMMIT")
                    deleted += n
                    if n < _SWEEP_CHUNK or self._aborted:
                        break
            if self.max_age_ms is not None:
                cutoff = now - self.max_age_ms
                while True:
                    con.execute("BEGIN IMMEDIATE")
                    upto = con.execute(sql.EXPIRED_UPTO, (topic, cutoff, _SWEEP_CHUNK)).fetchone()[
                        0
                    ]
                    n = 0
                    if upto is not None:
                        n = con.execute(sql.SWEEP_EXPIRED, (topic, upto)).rowcount
                        con.execute(sql.SWEEP_ORPHAN_LEASES, (topic, upto))
                    con.execute("COMMIT")
                    deleted += n
                    if n < _SWEEP_CHUNK or self._aborted:
                        break
        self.stats.messages_deleted += deleted
        self.stats.sweeps += 1


def _skipped(raw: bytes | None, skip: tuple[str, str]) -> bool:
    return bool(raw) and decode_metadata(raw).get(skip[0]) == skip[1]


def _future(op: Op) -> asyncio.Future[Any] | None:
    """The future an operation resolves, if it has one."""
    return getattr(op, "done", None)
