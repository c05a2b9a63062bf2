"""Upkeep on postgresql://: lease keepalive and retention.

Every third of ``visibility_timeout`` the leases the bus's live subscriptions hold
are renewed (writing their pending acks), and a LISTEN connection that died
silently is noticed. Every ``cleanup_interval`` messages every group has
acknowledged and older than ``retention`` are deleted, by one process at a time (an
advisory lock), in chunks of ``_RETENTION_CHUNK``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Final

from eventmill.errors import ClosedError, PubSubError
from eventmill.pubsub.postgres._asyncpg import Connection
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._runner import Runner
from eventmill.pubsub.postgres._settlements import Lease, Settlements
from eventmill.pubsub.postgres._sql import Sql
from eventmill.pubsub.postgres._wakeups import Wakeups

__all__ = ["Upkeep"]

log = logging.getLogger("eventmill.pubsub.postgres")

_RETENTION_CHUNK: Final = 5000


def _deleted(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


class Upkeep:
    """The keepalive and retention loops of one bus."""

    def __init__(
        self,
        runner: Runner,
        sql: Sql,
        config: PostgresConfig,
        settlements: Settlements,
        wakeups: Wakeups,
        held_leases: Callable[[], Iterator[Lease]],
    ) -> None:
        self._runner = runner
        self._sql = sql
        self._config = config
        self._settlements = settlements
        self._wakeups = wakeups
        self._held_leases = held_leases

    async def keepalive_loop(self) -> None:
        """Renew the leases held by live subscriptions (writing their acks); revive LISTEN."""
        cfg = self._config
        period = cfg.visibility_timeout / 3
        while True:
            await asyncio.sleep(period)
            self._wakeups.check()
            leases = list(self._held_leases())
            if not leases:
                continue
            try:
                await self._settlements.update_leases(leases, cfg.visibility_timeout, period)
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// lease renewal failed: %s", exc)

    async def retention_loop(self, retention: float) -> None:
        """Delete fully consumed messages older than ``retention`` (one process at a time)."""
        sql = self._sql

        async def op(conn: Connection) -> int:
            async with conn.transaction():
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, 0)", sql.lock_class ^ 1
                )
                if not got:
                    return 0
                status = await conn.execute(sql.retention, retention, _RETENTION_CHUNK)
            return _deleted(status)

        interval = self._config.cleanup_interval
        while True:
            await asyncio.sleep(interval)
            try:
                while (
                    await self._runner.run(op, what="retention", deadline=interval)
                    >= _RETENTION_CHUNK
                ):
                    pass
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// retention pass failed: %s", exc)

    async def run_retention(self) -> int:
        """Run one retention pass now; return how many messages were deleted."""
        retention = self._config.retention
        if retention is None:
            return 0
        sql = self._sql

        async def op(conn: Connection) -> int:
            return _deleted(await conn.execute(sql.retention, retention, _RETENTION_CHUNK))

        total = 0
        while True:
            n = await self._runner.run(
                op, what="retention", deadline=self._config.reconnect_timeout
            )
            total += n
            if n < _RETENTION_CHUNK:
                return total
