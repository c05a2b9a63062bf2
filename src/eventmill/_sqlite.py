"""SQLite writes on the event loop's thread, and the WAL checkpoints that keep them bounded.

Private; used by the sqlite:// bus (:mod:`eventmill.pubsub.sqlite`) and by the SQL
store (:meth:`eventmill.store.Store.sqlite_write`). Both commit small write
transactions on the event loop's own thread when the file runs with
``synchronous=normal`` (a commit then appends to the WAL without an fsync, cheaper
than a hand-off to a thread and back), on a connection from :func:`connect_inline`
that never waits for a lock: a locked file is reported at once (:func:`is_locked`)
and the caller hands the write to its writer thread instead.

That connection never checkpoints either. :class:`Checkpoints` counts its commits
and, every :data:`CHECKPOINT_EVERY`, copies the WAL into the database off the loop
and makes SQLite start the log over, so it stays bounded under steady load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final

__all__ = [
    "CHECKPOINT_EVERY",
    "Checkpoints",
    "checkpoint",
    "checkpoint_file",
    "connect_inline",
    "is_locked",
]

log = logging.getLogger("eventmill.sqlite")

CHECKPOINT_EVERY: Final = 200
"""Inline commits between two WAL checkpoints."""

_LOCKED: Final = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_locked(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, is SQLite's "database is
    locked" (``SQLITE_BUSY`` or ``SQLITE_LOCKED``, extended codes included)."""
    for _ in range(8):  # an eventmill or SQLAlchemy error wraps the driver's
        if exc is None:
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _LOCKED
        exc = exc.__cause__
    return False


def connect_inline(path: str, *pragmas: str) -> sqlite3.Connection:
    """A connection for commits on the event loop's thread (the file is in WAL mode).

    It never waits for a lock (busy timeout 0), never checkpoints (autocheckpoint
    off: :class:`Checkpoints` does, off the loop) and commits without an fsync
    (``synchronous=normal``). ``pragmas`` run after those.
    """
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in (
            "PRAGMA busy_timeout = 0",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA wal_autocheckpoint = 0",
            *pragmas,
        ):
            con.execute(pragma).close()
    except BaseException:
        con.close()
        raise
    return con


def checkpoint(con: sqlite3.Connection, *, rewind: bool) -> bool:
    """Copy the WAL into the database (``PASSIVE``: it blocks no reader or writer);
    return whether it copied the whole log, as the log was when it began.

    With ``rewind``, once the whole log is copied, a no-op write on ``con`` starts it
    over: the write that rewinds the log also syncs its header, and it is then this
    thread's, not the next commit's on the event loop. Only exact while nothing else
    appends (see :class:`Checkpoints`). Blocking: run it on a thread.
    """
    busy, logged, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    whole = not busy and logged == copied
    if whole and rewind:
        con.execute("BEGIN IMMEDIATE")
        try:
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
            con.execute(f"PRAGMA user_version = {version}")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
    return bool(whole)


def checkpoint_file(path: str, *, rewind: bool) -> bool:
    """:func:`checkpoint` on a connection of its own to ``path`` (blocking)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        return checkpoint(con, rewind=rewind)
    finally:
        con.close()


class Checkpoints:
    """When and how the WAL that inline commits append to is checkpointed.

    SQLite starts the WAL over (the next write goes to its beginning) only once
    every frame in it was copied into the database. A ``PASSIVE`` checkpoint copies
    the frames there when it began, so one that runs while commits go on never
    finishes the log, which then grows for as long as the load lasts (and every
    write and checkpoint gets slower); and it reports the whole log copied even when
    frames were appended while it ran.

    So :meth:`committed` counts inline commits, and every :data:`CHECKPOINT_EVERY`
    of them two steps run, off the event loop: ``copy(False)`` copies the bulk while
    inline commits go on; then, within ``pause()`` (while nothing in this process
    appends to the log), ``copy(True)`` copies what was appended meanwhile and
    rewinds the log (:func:`checkpoint`). :attr:`paused` is true during that second
    step, and also when the first has not ended after another ``CHECKPOINT_EVERY``
    commits (a busy loop can starve its thread of the GIL): an owner whose pause is
    that flag sends its writes elsewhere while it is set, so the log stays bounded.
    A failed step is logged and retried at the next checkpoint.
    """

    def __init__(
        self,
        copy: Callable[[bool], Awaitable[bool]],
        pause: Callable[[], AbstractAsyncContextManager[object]],
    ) -> None:
        self._copy = copy
        self._pause = pause
        self._since = 0
        self._task: asyncio.Task[None] | None = None
        self.paused = False
        """Whether inline commits must wait or go elsewhere (see the class docstring)."""

    @property
    def running(self) -> bool:
        """Whether a checkpoint is in progress."""
        return self._task is not None

    def committed(self) -> None:
        """Count one inline commit; start a checkpoint when one is due."""
        self._since += 1
        if self._since < CHECKPOINT_EVERY:
            return
        self._since = 0
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:  # still running: let it catch up before the log grows further
            self.paused = True

    async def _run(self) -> None:
        try:
            await self._copy(False)
            async with self._pause():
                self.paused = True
                await self._copy(True)
        except Exception as exc:
            log.warning("WAL checkpoint failed (retried at the next one): %s", exc)
        finally:
            self.paused = False
            self._task = None

    async def aclose(self) -> None:
        """Wait for a checkpoint in progress."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
