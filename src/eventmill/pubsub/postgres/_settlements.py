"""Settlements on postgresql://: acks and nacks, written in batches.

A batch whose messages are all acknowledged is deleted; a nacked message moves into
a lease of its own, claimable at once; these are flushed every ``ack_interval`` (and
on ``close``). Acks of a batch still in progress are written into its lease once
``_PARTIAL_AFTER`` old (and by :meth:`Settlements.flush`), and with every lease
renewal or release (:meth:`Settlements.update_leases`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from eventmill.errors import ClosedError, PubSubError
from eventmill.pubsub.postgres._asyncpg import Connection
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._runner import Runner
from eventmill.pubsub.postgres._sql import Sql

__all__ = ["Lease", "LeaseUpdate", "Settlements"]

log = logging.getLogger("eventmill.pubsub.postgres")

_PARTIAL_AFTER: Final = 0.05  # acks of a batch in progress are written once this old (s)


@dataclass(slots=True, eq=False)
class Lease:
    """A batch of the log held by one subscription (a row of ``<prefix>leases``)."""

    lid: int
    counter: int
    """Bumped by the server each time the batch changes hands: a write guarded by a
    stale counter is ignored (the batch went to someone else)."""
    open: int
    """Messages of the batch handed out or buffered and not yet settled."""
    acked: list[int] = field(default_factory=list)
    """Seqs acknowledged and not yet written to the server."""
    acked_at: float = 0.0
    """``time.monotonic()`` of the oldest ack in :attr:`acked`."""


@dataclass(slots=True)
class LeaseUpdate:
    """Leases to renew (or release) with the acks of each not yet written."""

    leases: list[Lease]
    taken: list[list[int]]
    lids: list[int]
    counters: list[int]
    ack_lids: list[int]
    seqs: list[int]

    @classmethod
    def take(cls, leases: Iterable[Lease]) -> LeaseUpdate:
        """Take the pending acks out of ``leases`` (see :meth:`restore`)."""
        held = list(leases)
        taken = []
        ack_lids: list[int] = []
        seqs: list[int] = []
        for lease in held:
            acked, lease.acked = lease.acked, []
            taken.append(acked)
            ack_lids.extend(itertools.repeat(lease.lid, len(acked)))
            seqs.extend(acked)
        lids = [lease.lid for lease in held]
        return cls(held, taken, lids, [lease.counter for lease in held], ack_lids, seqs)

    def restore(self) -> None:
        """Put the taken acks back (the write did not happen)."""
        for lease, acked in zip(self.leases, self.taken, strict=True):
            lease.acked[:0] = acked

    async def execute(self, conn: Connection, sql: Sql, seconds: float) -> None:
        await conn.execute(
            sql.update_leases, self.lids, self.counters, self.ack_lids, self.seqs, seconds
        )


class Settlements:
    """The acks and nacks waiting to be written, and their writer.

    ``held_leases()`` lists the leases the bus's subscriptions hold; ``announce(tids)``
    is told the topics where nacked or released messages became claimable.
    """

    def __init__(
        self,
        runner: Runner,
        sql: Sql,
        config: PostgresConfig,
        held_leases: Callable[[], Iterator[Lease]],
        announce: Callable[[Iterable[int]], None],
    ) -> None:
        self._runner = runner
        self._sql = sql
        self._config = config
        self._held_leases = held_leases
        self._announce = announce
        self._done: list[Lease] = []
        self._nacks: list[tuple[Lease, int, int]] = []  # (lease, txid, seq)
        self._nack_tids: set[int] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    def done(self, lease: Lease) -> None:
        """Every message of ``lease`` is settled: delete it in the next flush."""
        self._done.append(lease)
        self._wake.set()

    def acked(self) -> None:
        """An ack of a batch still in progress waits to be written (next flush)."""
        self._wake.set()

    def nacked(self, tid: int, lease: Lease, txid: int, seq: int) -> None:
        """Record a nack: the message moves to a lease of its own in the next flush."""
        self._nacks.append((lease, txid, seq))
        self._nack_tids.add(tid)
        self._wake.set()

    async def loop(self) -> None:
        """Flush every ``ack_interval`` while there is something to flush."""
        cfg = self._config
        while True:
            await self._wake.wait()
            if len(self._done) + len(self._nacks) < cfg.ack_batch and cfg.ack_interval:
                await asyncio.sleep(cfg.ack_interval)
            self._wake.clear()
            with contextlib.suppress(PubSubError):
                await self.flush(_PARTIAL_AFTER)
            if any(lease.acked for lease in self._held_leases()):
                self._wake.set()  # acks of batches in progress: written when due

    async def flush(self, min_age: float = 0.0) -> None:
        """Write every ack and nack made so far (returns when they are committed); the
        acks of a batch in progress only once the oldest is ``min_age`` seconds old
        (most batches finish before: then only their deletion is written).

        If the server stays unreachable for ``reconnect_timeout`` the writes are
        dropped (with a warning): the messages are then delivered again.
        """
        async with self._lock:
            while True:
                done, nacks, tids = self._done, self._nacks, self._nack_tids
                self._done, self._nacks, self._nack_tids = [], [], set()
                due = time.monotonic() - min_age
                partial = LeaseUpdate.take(
                    lease for lease in self._held_leases() if lease.acked and lease.acked_at <= due
                )
                if not (done or nacks or partial.lids):
                    return
                try:
                    await self._runner.run(
                        functools.partial(self._write, done, nacks, partial),
                        what="ack",
                        deadline=self._config.reconnect_timeout,
                    )
                except ClosedError:
                    partial.restore()
                    return
                except PubSubError as exc:
                    log.warning(
                        "postgresql:// %d settlements not written (messages will be "
                        "delivered again): %s",
                        len(done) + len(nacks) + len(partial.seqs),
                        exc,
                    )
                    continue
                if nacks:
                    self._announce(tids)

    async def _write(
        self,
        done: list[Lease],
        nacks: list[tuple[Lease, int, int]],
        partial: LeaseUpdate,
        conn: Connection,
    ) -> None:
        sql = self._sql
        if partial.lids:
            await partial.execute(conn, sql, self._config.visibility_timeout)
        if nacks:
            async with conn.transaction():
                await conn.execute(
                    sql.nack,
                    [lease.lid for lease, _, _ in nacks],
                    [lease.counter for lease, _, _ in nacks],
                    [txid for _, txid, _ in nacks],
                    [seq for _, _, seq in nacks],
                )
                if done:
                    await conn.execute(
                        sql.delete_leases, [x.lid for x in done], [x.counter for x in done]
                    )
        elif done:
            await conn.execute(sql.delete_leases, [x.lid for x in done], [x.counter for x in done])

    async def update_leases(self, leases: list[Lease], seconds: float, deadline: float) -> None:
        """Write the pending acks of ``leases`` and set their deadline ``seconds`` from
        now (0: claimable again at once). Acks not written stay pending."""
        update = LeaseUpdate.take(leases)

        async def op(conn: Connection) -> None:
            await update.execute(conn, self._sql, seconds)

        try:
            await self._runner.run(op, what="lease update", deadline=deadline)
        except BaseException:
            update.restore()
            raise

    async def release(self, leases: list[Lease], tid: int) -> None:
        """Make the unsettled messages of ``leases`` claimable again at once (close)."""
        try:
            await self.update_leases(leases, 0.0, self._config.reconnect_timeout)
        except PubSubError as exc:
            log.warning(
                "postgresql:// could not release %d batches (they come back after the "
                "visibility timeout): %s",
                len(leases),
                exc,
            )
            return
        self._announce((tid,))
