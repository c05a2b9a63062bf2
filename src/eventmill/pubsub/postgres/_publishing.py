"""Publishing on postgresql://: group-commit workers.

A publish call that finds nothing queued and nothing being committed commits its
messages itself, in the caller's task, on a connection the bus keeps for it (no
task, no pool acquire: what one application task awaiting each publish pays).
Calls made meanwhile queue here; a worker takes up to ``publish_batch`` messages of
many calls into one statement committed on its own (a binary ``COPY``, or one
``INSERT`` for a few rows), ``publish_workers`` transactions at a time (the inline
commit counts as one), each taking about an even share of what is queued and in
flight, and each call returns when the transaction holding its messages commits.
Messages of one call are never split between transactions.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final

from eventmill.pubsub._errors import closed
from eventmill.pubsub.postgres._asyncpg import Connection
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._runner import HeldConnection, Runner
from eventmill.pubsub.postgres._sql import Sql

__all__ = ["GroupCommit", "Row"]

_COPY_MIN: Final = 8  # batches this large use COPY, smaller ones one INSERT (see _insert)

#: A message as it is inserted: (tid, msg_id, metadata JSON, payload).
Row = tuple[int, str, str, bytes]


@dataclass(slots=True)
class _Pending:
    """One publish call waiting for its group commit."""

    tid: int
    rows: list[Row]
    fut: asyncio.Future[None]


class GroupCommit:
    """The queue of publish calls and the workers that commit them.

    ``announce(tids)`` is told the topics of each committed batch (it wakes their
    consumers); ``spawn`` runs the workers as tasks of the bus.
    """

    def __init__(
        self,
        runner: Runner,
        sql: Sql,
        config: PostgresConfig,
        announce: Callable[[Iterable[int]], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._runner = runner
        self._sql = sql
        self._config = config
        self._announce = announce
        self._spawn = spawn
        self._pending: deque[_Pending] = deque()
        self._pending_count = 0
        self._workers: set[asyncio.Task[None]] = set()
        self._running = 0
        self._in_flight = 0  # rows of transactions being committed
        self._space: deque[asyncio.Future[None]] = deque()
        self._collecting = False  # a worker is about to take a batch (see _work)
        # The connection of inline commits, kept between them if that leaves one for
        # topic and group creation while every worker holds one too.
        self._lone = HeldConnection() if config.publish_workers + 1 < config.pool_max else None
        self._inline = 0
        self._inline_done: asyncio.Future[None] | None = None
        self.closed = False

    async def publish(self, tid: int, rows: list[Row]) -> None:
        """Commit ``rows`` of topic ``tid`` (inline when idle, else queued); return once
        the transaction holding them committed. Waits for room while ``max_pending``
        messages are queued."""
        if not self._running and not self._pending:
            await self._commit_inline(tid, rows)
            return
        n = len(rows)
        loop = asyncio.get_running_loop()
        while self._pending_count and self._pending_count + n > self._config.max_pending:
            wait: asyncio.Future[None] = loop.create_future()
            self._space.append(wait)
            await wait
            if self.closed:
                raise closed("postgresql://")
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append(_Pending(tid, rows, fut))
        self._pending_count += n
        if not self._collecting and self._running < self._config.publish_workers:
            self._start_worker()
        await fut  # if the caller is cancelled, the messages may still be committed

    async def _commit_inline(self, tid: int, rows: list[Row]) -> None:
        """Commit ``rows`` in the caller's task (nothing else is being committed)."""
        self._running += 1
        self._inline += 1
        self._in_flight += len(rows)
        try:
            await self._runner.run(
                functools.partial(self._insert_rows, rows),
                what="publish",
                deadline=self._config.reconnect_timeout,
                durable=True,
                held=self._lone,
            )
        except asyncio.CancelledError:
            # Cancelled mid-statement: the pool waits for the server to cancel it.
            if self._lone is not None:
                await self._lone.give_back()
            raise
        finally:
            self._running -= 1
            self._inline -= 1
            self._in_flight -= len(rows)
            if (
                self._pending
                and not self._collecting
                and self._running < self._config.publish_workers
                and not self._runner.aborted
            ):
                self._start_worker()  # calls made meanwhile, with no worker slot then
            done = self._inline_done
            if not self._inline and done is not None and not done.done():
                done.set_result(None)
        self._announce((tid,))

    def _start_worker(self) -> None:
        self._running += 1
        self._collecting = True
        task = self._spawn(self._work())
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _work(self) -> None:
        """Commit pending calls, batch after batch, until none are left.

        At most one worker is *collecting* (between waking and taking its batch) at a
        time, so concurrent calls gather into its batch instead of starting workers.
        """
        cfg = self._config
        # Keep a connection only if that leaves one for topic and group creation.
        held = HeldConnection() if cfg.publish_workers < cfg.pool_max else None
        try:
            while True:
                # Publishers woken by the last commit queue their next call first (so
                # they join this worker's next batch rather than one of them finding
                # the bus idle and committing a lone call inline beside it).
                self._collecting = True
                await asyncio.sleep(0)
                self._collecting = False
                if not self._pending or self._runner.aborted:
                    break
                # Two transactions of even size: one commits while the other's
                # publishers run. So with a second worker possible, take half of what
                # is queued and in flight (a free slot takes the rest; a busy one
                # takes it once its commit is done); a lone call committed beside a
                # large batch would otherwise stay that small round after round.
                limit = cfg.publish_batch
                if cfg.publish_workers > 1:
                    limit = min(limit, (self._pending_count + self._in_flight + 1) // 2)
                batch: list[_Pending] = []
                count = 0
                while self._pending and (not batch or count + len(self._pending[0].rows) <= limit):
                    item = self._pending.popleft()
                    batch.append(item)
                    count += len(item.rows)
                if not batch:  # another worker took everything
                    break
                self._pending_count -= count
                self._in_flight += count
                if self._pending and self._running < cfg.publish_workers:
                    self._start_worker()
                self._wake_space()
                try:
                    await self._runner.run(
                        functools.partial(self._insert, batch),
                        what="publish",
                        deadline=cfg.reconnect_timeout,
                        durable=True,
                        held=held,
                    )
                except Exception as exc:
                    self._in_flight -= count
                    for item in batch:
                        if not item.fut.done():
                            item.fut.set_exception(exc)
                            item.fut.exception()  # mark retrieved; the caller re-raises it
                else:
                    self._in_flight -= count
                    for item in batch:
                        if not item.fut.done():
                            item.fut.set_result(None)
                    self._announce({item.tid for item in batch})
        finally:
            self._running -= 1
            if held is not None:
                await held.give_back()

    async def _insert(self, batch: list[_Pending], conn: Connection) -> None:
        """One statement, committed on its own (the caller then wakes consumers).

        A binary ``COPY`` (which numbers the rows in record order): asyncpg encodes
        its records at about half the CPU of four arrays. Below ``_COPY_MIN`` rows,
        one ``INSERT`` instead: one answer to wait for where ``COPY`` sends two,
        which is what a lone publisher waits for.
        """
        if len(batch) == 1:
            await self._insert_rows(batch[0].rows, conn)
            return
        await self._insert_rows([row for item in batch for row in item.rows], conn)

    async def _insert_rows(self, rows: list[Row], conn: Connection) -> None:
        sql = self._sql
        if len(rows) < _COPY_MIN:
            tids, ids, metas, payloads = (list(col) for col in zip(*rows, strict=True))
            await conn.execute(sql.publish, tids, ids, metas, payloads)
            return
        await conn.copy_records_to_table(
            sql.messages_table, schema_name=sql.schema, columns=sql.copy_columns, records=rows
        )

    def _wake_space(self) -> None:
        while self._space:
            waiter = self._space.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Refuse new calls that wait for room, and wait until every queued call is
        committed (or failed)."""
        self.closed = True
        self._wake_space()
        while self._workers or self._inline:  # workers exit once every call is committed
            if self._workers:
                await asyncio.wait(list(self._workers))
            else:
                self._inline_done = asyncio.get_running_loop().create_future()
                await self._inline_done
        if self._lone is not None:
            await self._lone.give_back()

    def abort(self) -> None:
        """Fail every queued call (the runner is aborted: workers stop)."""
        self.closed = True
        if self._lone is not None:  # the pools are terminated: nothing to give back
            self._lone.conn = self._lone.pool = None
        while self._pending:
            item = self._pending.popleft()
            if not item.fut.done():
                item.fut.set_exception(closed("postgresql://"))
        self._wake_space()
