"""Wake-ups on postgresql://: LISTEN/NOTIFY between processes.

An idle consumer sleeps. Messages of a topic becoming claimable (a publish, a nack,
a release) wake the consumers of the topic in this process at once, and those of
other processes with a NOTIFY on the topic's channel right after the commit
(coalesced to one per topic every ``_NOTIFY_WINDOW``, sent on the LISTEN connection
when it is up and idle). A NOTIFY is only a wake-up:
what to read is decided by the cursors, so one that is lost delays delivery and
loses nothing. The LISTEN connection is dedicated; when it drops it is re-made with
backoff, and every local consumer is woken (NOTIFYs sent meanwhile are lost).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

from eventmill.errors import BackendUnavailableError, ClosedError, PubSubError
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed
from eventmill.pubsub.postgres._asyncpg import Connection, connect
from eventmill.pubsub.postgres._config import PostgresConfig
from eventmill.pubsub.postgres._errors import is_transient, mapped
from eventmill.pubsub.postgres._runner import Runner
from eventmill.pubsub.postgres._sql import Sql

__all__ = ["Wakeups"]

log = logging.getLogger("eventmill.pubsub.postgres")

_NOTIFY_WINDOW: Final = 0.005  # at most one NOTIFY per topic this often (seconds)


class Wakeups:
    """The LISTEN connection, the NOTIFYs this bus sends, and local wake-ups.

    ``wake(tid)`` wakes this process's consumers of topic ``tid``; ``local_tids()``
    lists the topics they read (woken all after the LISTEN connection came back).
    """

    def __init__(
        self,
        runner: Runner,
        sql: Sql,
        config: PostgresConfig,
        wake: Callable[[int], None],
        local_tids: Callable[[], Iterable[int]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._runner = runner
        self._sql = sql
        self._config = config
        self._wake = wake
        self._local_tids = local_tids
        self._spawn = spawn
        self.connection: Connection | None = None
        """The LISTEN connection (``None`` while it is down)."""
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._channels: dict[str, int] = {}
        self._relisten_task: asyncio.Task[None] | None = None
        self._token = uuid.uuid4().hex[:12]  # marks this bus's own NOTIFYs
        self._notify_tids: set[int] = set()
        self._notify_wake = asyncio.Event()
        self.closed = False

    # -- LISTEN -------------------------------------------------------------------------

    async def connect(self) -> None:
        """(Re)make the LISTEN connection, listening on every channel listened on so far."""
        conn = await connect(self._config.dsn)
        try:
            for channel in list(self._channels):
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_lost)
        self.connection = conn
        self._ready.set()

    def check(self) -> None:
        """Notice a LISTEN connection that died silently (called by the keepalive)."""
        conn = self.connection
        if conn is not None and conn.is_closed():
            self._on_lost(conn)

    def _on_lost(self, conn: Connection) -> None:
        if self.closed or conn is not self.connection:
            return
        self.connection = None
        self._ready.clear()
        if self._relisten_task is None or self._relisten_task.done():
            self._relisten_task = self._spawn(self._relisten())

    async def _relisten(self) -> None:
        backoff = Backoff(self._config.reconnect_max_delay)
        while not self.closed:
            try:
                async with self._lock:
                    await self.connect()
                self._runner.outage.ok()
                break
            except Exception as exc:
                if is_transient(exc):
                    self._runner.outage.lost("LISTEN", type(exc).__name__)
                else:
                    log.error("postgresql:// LISTEN reconnect failed: %s", type(exc).__name__)
                await backoff.sleep()
        # NOTIFYs sent while we were away are lost: let every consumer look for work.
        for tid in set(self._local_tids()):
            self._wake(tid)

    async def listen(self, tid: int) -> None:
        """Listen on topic ``tid``'s channel, or, if already listening, make a round trip
        on the LISTEN connection: every NOTIFY of a commit before this call has then
        been read. Raises BackendUnavailableError if the connection stays down for
        ``reconnect_timeout``."""
        channel = self._sql.channel(tid)
        loop = asyncio.get_running_loop()
        end = loop.time() + self._config.reconnect_timeout
        while True:
            try:
                async with asyncio.timeout(max(end - loop.time(), 0.01)):
                    await self._ready.wait()
            except TimeoutError:
                raise BackendUnavailableError(
                    f"postgresql:// LISTEN connection to {self._runner.where} is down"
                ) from None
            async with self._lock:
                conn = self.connection
                if conn is None:
                    continue
                try:
                    with mapped("subscribe", self._runner.where):
                        if channel in self._channels:
                            await conn.execute("SELECT 1")
                        else:
                            await conn.add_listener(channel, self._on_notify)
                            self._channels[channel] = tid
                    return
                except Exception as exc:
                    if not is_transient(exc):
                        raise
            if self.closed:
                raise closed("postgresql://")
            await asyncio.sleep(0.05)

    def _on_notify(self, conn: Connection, pid: int, channel: str, payload: str) -> None:
        # "tid:token": messages of topic tid were committed (or released) by the bus
        # whose token it is. This bus wakes its own consumers without a NOTIFY.
        head, _, token = payload.partition(":")
        if token == self._token:
            return
        try:
            tid = int(head)
        except ValueError:
            return
        self._wake(tid)

    # -- NOTIFY -------------------------------------------------------------------------

    def announce(self, tids: Iterable[int]) -> None:
        """Messages of ``tids`` became claimable: wake local consumers now, other
        processes' with a NOTIFY (see :meth:`notify_loop`)."""
        for tid in tids:
            self._wake(tid)
            self._notify_tids.add(tid)
        self._notify_wake.set()

    async def notify_loop(self) -> None:
        """Send the NOTIFYs :meth:`announce` asks for: the first at once, then at most
        one per topic every ``_NOTIFY_WINDOW`` (a NOTIFY is only a wake-up)."""
        while True:
            await self._notify_wake.wait()
            self._notify_wake.clear()
            try:
                await self.send_notifies()
            except ClosedError:
                return
            except PubSubError as exc:
                log.warning("postgresql:// NOTIFY failed (consumers elsewhere wake later): %s", exc)
            await asyncio.sleep(_NOTIFY_WINDOW)

    async def send_notifies(self) -> None:
        """Send the NOTIFYs asked for so far."""
        tids, self._notify_tids = self._notify_tids, set()
        if not tids:
            return
        token = self._token
        notes = ", ".join(f"pg_notify('{self._sql.channel(t)}', '{t}:{token}')" for t in tids)
        statement = f"SELECT {notes}"
        # On the LISTEN connection when it is up and free: no pool acquire and release
        # (whose release runs as a task of its own) for each NOTIFY.
        listening = self.connection
        if listening is not None and not self._lock.locked():
            try:
                async with self._lock:
                    with mapped("notify", self._runner.where):
                        await listening.execute(statement)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise

        async def op(conn: Connection) -> None:
            await conn.execute(statement)

        await self._runner.run(op, what="notify", deadline=self._config.reconnect_timeout)

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Drop the LISTEN connection, without waiting for the server: the session ends
        with it (its LISTENs too), and an idle session's end is no error to the server."""
        self.closed = True
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.terminate()

    def abort(self) -> None:
        """Drop the LISTEN connection at once."""
        self.closed = True
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.terminate()
