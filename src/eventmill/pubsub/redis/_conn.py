"""A connection of the redis:// backend's own, for one sender at a time (private).

redis-py's ``Redis.execute_command`` takes a connection from the pool, wraps the
call in its retry and observability layers, bounds the write with
``asyncio.wait_for`` (a task and a loop turn per command) and gives the connection
back: about 15-40 µs of CPU per command before any byte is sent. A sender that runs
one exchange at a time and retries by itself (the publisher) needs none of it, so
:class:`DirectConnection` keeps one connection (built from the pool's settings, not
taken from the pool) and writes each batch of commands in one write, then reads
their replies, all under one ``asyncio.timeout``.

A failed or cancelled exchange closes the socket (a reply may be half read); the
next exchange connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex

__all__ = ["DirectConnection"]


class DirectConnection:
    """One connection, one exchange at a time (its owner serialises them)."""

    __slots__ = ("_conn", "_kwargs", "_make", "_timeout")

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        pool = client.connection_pool
        self._make = pool.connection_class
        # The exchange as a whole is bounded below; no per-read/per-write timeouts.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._timeout = timeout
        self._conn: Any = None

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies in order; the reply
        of a command Redis refused is its :class:`redis.exceptions.ResponseError`.

        Raises a connection error (one of ``TRANSIENT``) if Redis cannot be reached or
        does not answer within the timeout; the socket is then closed.
        """
        conn = self._conn
        if conn is None:
            conn = self._conn = self._make(**self._kwargs)
        # A connection kept idle may have been closed by the server meanwhile (a
        # restart): such a one gets one quiet retry on a new connection. Should the
        # connection instead have died mid-exchange, a command Redis already ran is sent
        # again: at-least-once, as with every retry of a publish (ids drop duplicates).
        reused = bool(conn.is_connected)
        while True:
            try:
                return await self._exchange(conn, commands)
            except rex.ConnectionError:
                if not reused:
                    raise
                reused = False

    async def _exchange(self, conn: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout):
                if len(commands) == 1:
                    packed = conn.pack_command(*commands[0])
                else:
                    packed = conn.pack_commands(commands)
                await conn.send_packed_command(packed, check_health=False)
                for _ in range(len(commands)):
                    try:
                        replies.append(await conn.read_response())
                    except rex.ResponseError as exc:
                        replies.append(exc)
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise rex.TimeoutError(f"no reply from Redis within {self._timeout:g}s") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return replies

    async def close(self) -> None:
        """Close the socket (a later :meth:`execute` connects again)."""
        conn = self._conn
        if conn is not None:
            await conn.disconnect(nowait=True)
