"""The retry runner of postgresql://: two pools, and every statement run with reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from eventmill.errors import BackendUnavailableError
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed
from eventmill.pubsub._outage import Outage
from eventmill.pubsub.postgres._asyncpg import Connection, Pool, create_pool
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._errors import is_transient, mapped

__all__ = ["CONSUMER_SETTINGS", "HeldConnection", "Runner"]

log = logging.getLogger("eventmill.pubsub.postgres")

T = TypeVar("T")

#: Session settings of the consuming pool. Claims, acks, nacks and lease renewals
#: only ever risk a redelivery if lost in a server crash, so their commits need not
#: wait for the WAL flush. Every statement it runs is built for an index (a queue
#: table's statistics are always stale: a scan+sort plan chosen for "49 rows" on a
#: 100,000-row backlog is 10x slower), so the planner is kept on indexes; and JIT
#: compilation, which the retention pass's estimates trigger, costs ~300 ms for a
#: statement that runs in ~1 ms.
CONSUMER_SETTINGS: Final = {
    "synchronous_commit": "off",
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
    "jit": "off",
}


class HeldConnection:
    """A pool connection a long-running task keeps between its statements.

    asyncpg's pool costs ~55 µs of CPU per acquire and release, as much as the
    client side of a 50-row ``COPY``; a publish worker commits batch after batch, so
    it keeps one connection while it runs (see :meth:`Runner.run`) and gives it back
    when it stops or the connection fails. Workers keep connections only while
    ``publish_workers < pool_max``, so topic and group creation always find one.
    """

    __slots__ = ("conn", "pool")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.pool: Pool | None = None

    async def give_back(self, *, broken: bool = False) -> None:
        """Return the connection to its pool (closed first if ``broken``)."""
        conn, pool, self.conn, self.pool = self.conn, self.pool, None, None
        if conn is not None and pool is not None:
            await _release(pool, conn, broken=broken)


async def _release(pool: Pool, conn: Connection, *, broken: bool) -> None:
    """Return ``conn`` to ``pool``; a ``broken`` one (its statement failed with a
    connection error) is closed first, so nobody gets it half-way through a protocol
    exchange: the pool's cheap reset (:func:`_reset`) does not test the connection."""
    # Either call fails once the connection's loss was seen: asyncpg has then
    # closed it and returned it to the pool itself.
    with contextlib.suppress(Exception):
        if broken:
            conn.terminate()
        await pool.release(conn)


def _usable(conn: Connection) -> bool:
    """Whether a held connection can still run statements: once asyncpg saw it end
    (a server restart while it sat idle), it closed it and took it back from us."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # "released back to the pool"
        return False


async def _reset(conn: Connection) -> None:
    """Pool reset: roll back a transaction left open by an error (cheaper than RESET ALL)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Runner:
    """Owns the two pools and runs statements on them, retrying lost connections.

    ``pool`` publishes and creates topics and groups (commits wait for the WAL
    flush); ``consumer_pool`` runs everything else with :data:`CONSUMER_SETTINGS`.
    The bus sets :attr:`closed` on close (runs without a deadline then stop) and
    :attr:`aborted` on abort (every run stops).
    """

    def __init__(self, config: PostgresConfig, where: str) -> None:
        self.config = config
        self.where = where
        self.pool: Pool | None = None
        self.consumer_pool: Pool | None = None
        self.closed = False
        self.aborted = False
        #: The one line for a server gone away (every run that fails meets it).
        self.outage = Outage(log, "postgresql://", where)

    async def start(self, prepare: Callable[[Pool], Awaitable[None]]) -> None:
        """Open both pools and run ``prepare(pool)``, retrying while the server is
        unreachable for up to ``connect_timeout`` (then BackendUnavailableError)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.connect_timeout
        backoff = Backoff(cfg.reconnect_max_delay)
        while True:
            pools: list[Pool] = []
            try:
                # bounded by what is left of connect_timeout: a server that accepts the
                # connection and never answers would otherwise hold it 60 s (asyncpg's)
                with mapped("start", self.where):
                    async with asyncio.timeout(max(0.1, end - loop.time())):
                        pool, consumer_pool = await self._open_pools(pools, prepare)
                    break
            except Exception as exc:
                for p in pools:
                    p.terminate()
                if not is_transient(exc):
                    raise
                delay = backoff.next()
                if loop.time() + delay > end:
                    raise BackendUnavailableError(
                        f"postgresql server {self.where} unreachable ({type(exc).__name__}: {exc})"
                    ) from exc
                await asyncio.sleep(delay)
        self.pool, self.consumer_pool = pool, consumer_pool

    async def _open_pools(
        self, pools: list[Pool], prepare: Callable[[Pool], Awaitable[None]]
    ) -> tuple[Pool, Pool]:
        """Both pools (each appended to ``pools`` as it opens), prepared."""
        cfg = self.config
        pool = await create_pool(
            cfg.dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, reset=_reset
        )
        pools.append(pool)
        consumer_pool = await create_pool(
            cfg.dsn,
            min_size=cfg.pool_min,
            max_size=cfg.pool_max,
            reset=_reset,
            server_settings=CONSUMER_SETTINGS,
        )
        pools.append(consumer_pool)
        await prepare(pool)
        return pool, consumer_pool

    async def run(
        self,
        op: Callable[[Connection], Awaitable[T]],
        *,
        what: str,
        deadline: float | None,
        stop: Callable[[], bool] | None = None,
        durable: bool = False,
        held: HeldConnection | None = None,
    ) -> T:
        """Run ``op(connection)``, retrying connection failures with capped backoff.

        ``durable`` ops (publish, topic and group creation) run on the pool whose
        commits wait for the WAL flush; the others on the ``synchronous_commit=off`` one.
        With ``held``, the connection it keeps is used (one is acquired if it has
        none); after a failure it is given back and the next try acquires another.

        Gives up after ``deadline`` seconds (``None``: while the bus is open, or until
        ``stop()``), raising :class:`BackendUnavailableError`; raises
        :class:`ClosedError` once aborted or stopped, and translates other errors
        (:func:`~eventmill.pubsub.postgres._errors.mapped`).
        """
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        backoff = Backoff(self.config.reconnect_max_delay)
        while True:
            if self.aborted or (stop is not None and stop()):
                raise closed("postgresql://")
            if end is None and self.closed:
                raise closed("postgresql://")
            pool = self.pool if durable else self.consumer_pool
            if pool is None:
                raise closed("postgresql://")
            conn: Connection | None = None
            try:
                with mapped(what, self.where):  # non-transient errors become eventmill's
                    if held is None:
                        conn = await pool.acquire()
                        result = await op(conn)
                    else:
                        if held.conn is not None and not _usable(held.conn):
                            await held.give_back(broken=True)
                        if held.conn is None:
                            held.conn, held.pool = await pool.acquire(), pool
                        result = await op(held.conn)
            except Exception as exc:
                broken = is_transient(exc)
                if held is not None:
                    await held.give_back(broken=broken)
                elif conn is not None:
                    await _release(pool, conn, broken=broken)
                    conn = None
                if self.aborted:
                    raise closed("postgresql://") from exc
                if not broken:
                    raise
                delay = backoff.next()
                if end is not None and loop.time() + delay > end:
                    raise BackendUnavailableError(
                        f"postgresql:// {what} gave up: server {self.where} unreachable "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                self.outage.lost(what, type(exc).__name__)
                await asyncio.sleep(delay)
            except BaseException:  # cancelled: the pool waits for the server to cancel
                if conn is not None:
                    await _release(pool, conn, broken=False)
                raise
            else:
                if conn is not None:  # a failed release must not fail what was done
                    await _release(pool, conn, broken=False)
                if self.outage.down:
                    self.outage.ok()
                return result

    def terminate(self) -> None:
        """Drop every pooled connection at once (abort)."""
        for pool in (self.pool, self.consumer_pool):
            if pool is not None:
                pool.terminate()

    async def close(self) -> None:
        """Drop both pools' connections, once the bus's statements have ended.

        Not ``Pool.close()``, which waits for the server to answer each connection's
        Terminate: a bus's close would then wait on a server that may be busy. A session
        that ends outside a transaction is no error to the server (it notes it at
        DEBUG1 only), and nothing of the bus is left to say to it.
        """
        self.terminate()
