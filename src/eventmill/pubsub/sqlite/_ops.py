"""The operations the sqlite:// writer thread runs: one frozen dataclass per kind.

The event loop puts an operation on the writer's queue and awaits its ``done``
future; the writer runs a batch of them in one transaction (see
:mod:`eventmill.pubsub.sqlite._writer`) and hands back one :data:`Outcome` per
future, which the loop applies. Settlements (acks and nacks) are no operations:
they wait in a deque of :data:`Settlement` tuples that every batch drains first.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, TypeVar

from eventmill.message import Message

__all__ = [
    "Abort",
    "Checkpoint",
    "Fetch",
    "Fetched",
    "Flush",
    "Head",
    "Join",
    "Op",
    "Outcome",
    "Publish",
    "Read",
    "Release",
    "Row",
    "Settlement",
    "Stop",
    "failure",
    "result",
]

T = TypeVar("T")

#: A message row as inserted: (topic, id, metadata JSON or None, payload).
Row = tuple[str, str, bytes | None, bytes]

#: (seq, message) pairs handed to a subscription.
Fetched = list[tuple[int, Message]]

#: An ack (``True``) or nack: (ok, topic, group, seq, lease owner).
Settlement = tuple[bool, str, str, int, str]


@dataclass(frozen=True, slots=True)
class Publish:
    """Insert one publish call's rows, in order, in one transaction."""

    topic: str
    rows: list[Row]
    skippers: frozenset[str]
    """Groups of ``topic`` that skip every one of these rows (see ``Writer.skips``)."""
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Lease up to ``limit`` messages of ``group`` on ``topic`` to ``owner``."""

    topic: str
    group: str
    owner: str
    limit: int
    done: asyncio.Future[Fetched]


@dataclass(frozen=True, slots=True)
class Read:
    """Read up to ``limit`` messages of ``topic`` after seq ``after`` (ephemeral)."""

    topic: str
    after: int
    limit: int
    done: asyncio.Future[Fetched]


@dataclass(frozen=True, slots=True)
class Join:
    """Create ``group`` on ``topic`` at the oldest retained message, unless it exists."""

    topic: str
    group: str
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Head:
    """The highest seq of the file (where an ephemeral subscription starts)."""

    done: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class Release:
    """Make every message ``owner`` holds on ``topic`` available again at once."""

    topic: str
    owner: str
    done: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class Flush:
    """Commit the settlements made so far (``done`` is ``None`` for a nudge)."""

    done: asyncio.Future[None] | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A step of the owner's WAL checkpoint, after the batch (see ``_sqlite.Checkpoints``)."""

    final: bool
    done: asyncio.Future[bool]


@dataclass(frozen=True, slots=True)
class Stop:
    """Run what is queued, then stop the thread."""

    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop at once: nothing queued runs, nothing is flushed (a killed process)."""


Op = Publish | Fetch | Read | Join | Head | Release | Flush | Checkpoint | Stop | Abort

#: Applied on the event loop: resolves one operation's future.
Outcome = functools.partial[None]


def _set_result(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def result(fut: asyncio.Future[T], value: T) -> Outcome:
    """The outcome that resolves ``fut`` with ``value``."""
    return functools.partial(_set_result, fut, value)


def failure(fut: asyncio.Future[Any], exc: BaseException) -> Outcome:
    """The outcome that fails ``fut`` with ``exc``."""
    return functools.partial(_set_exception, fut, exc)
