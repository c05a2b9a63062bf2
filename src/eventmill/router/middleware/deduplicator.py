"""Deduplicator: process a message once per key within a time window.

Before calling the handler, the message's key (``config.key``, default its id) is
added to a :class:`SeenStore` for ``config.window`` seconds. If the key was already
there, the message is a duplicate: the handler is skipped and the router acks it.
If the handler raises (or is cancelled), or the router cannot publish its results
(the router calls :meth:`Deduplicator.abandoned`), the key is removed again so the
redelivered message is processed. A duplicate arriving while the first copy is
still in flight is acked as a duplicate; should the first copy then fail, it is
nacked and its redelivery is processed, so nothing is lost.

The store is pluggable: anything with the :class:`SeenStore` methods (a Redis or SQL
table with expiry works across processes). :class:`MemorySeenStore` is the bounded
in-process store used by default.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from eventmill.errors import ConfigurationError
from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["Deduplicator", "DeduplicatorConfig", "MemorySeenStore", "SeenStore"]

_log = logging.getLogger("eventmill.router.deduplicator")


@runtime_checkable
class SeenStore(Protocol):
    """A store of keys seen recently. Safe to call from many tasks at once."""

    async def add(self, key: str, ttl: float) -> bool:
        """Record ``key`` for ``ttl`` seconds. Return ``True`` if it was new (absent
        or expired), ``False`` if it was already recorded; atomic per key."""
        ...

    async def discard(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        ...


class MemorySeenStore:
    """In-process :class:`SeenStore` holding at most ``max_keys`` keys.

    When full, adding a key evicts the oldest one first (its window ends early: a
    late duplicate of it would be processed again). Expired keys are dropped as new
    ones arrive. ``clock`` is injectable for tests (default :func:`time.monotonic`).
    """

    def __init__(self, max_keys: int = 100_000, *, clock: Callable[[], float] = time.monotonic):
        if max_keys < 1:
            raise ConfigurationError("MemorySeenStore.max_keys must be >= 1")
        self.max_keys = max_keys
        self._clock = clock
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    async def add(self, key: str, ttl: float) -> bool:
        now = self._clock()
        expiry = self._expiry
        while expiry:
            oldest = next(iter(expiry.values()))
            if oldest > now:
                break
            expiry.popitem(last=False)
        until = expiry.get(key)
        if until is not None and until > now:
            return False
        expiry.pop(key, None)
        while len(expiry) >= self.max_keys:
            expiry.popitem(last=False)
        expiry[key] = now + ttl
        return True

    async def discard(self, key: str) -> None:
        self._expiry.pop(key, None)


def _message_id(msg: Message) -> str:
    return msg.id


@dataclass(frozen=True, slots=True)
class DeduplicatorConfig:
    """Settings of :class:`Deduplicator`."""

    window: float = 600.0
    """Seconds a key is remembered after its message was first seen (default 600)."""
    key: Callable[[Message], str] = _message_id
    """Derives the deduplication key of a message (default: ``Message.id``)."""

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ConfigurationError("DeduplicatorConfig.window must be > 0")


class Deduplicator:
    """Middleware skipping (and acking) duplicates; see the module docstring.

    Keys are kept per handler: on a router, each handler remembers the keys it
    processed, so a message handed to several handlers (fan-out to groups, or a result
    forwarded under the same id) is processed by each of them once. ``store`` defaults
    to a new :class:`MemorySeenStore`; a shared store (Redis, SQL) sees keys prefixed
    with the handler's name and a ``\x1f``.
    """

    def __init__(
        self, config: DeduplicatorConfig | None = None, *, store: SeenStore | None = None
    ) -> None:
        self.config = config or DeduplicatorConfig()
        self.store: SeenStore = store if store is not None else MemorySeenStore()

    def __call__(self, handler: Handler) -> Handler:
        store = self.store
        window = self.config.window
        key_of = self.config.key

        async def deduplicate(msg: Message) -> HandlerResult:
            key = _scoped(key_of(msg))
            if not await store.add(key, window):
                _log.debug("message %s is a duplicate of key %r; acked unprocessed", msg.id, key)
                return None
            try:
                return await handler(msg)
            except BaseException:
                await store.discard(key)
                raise

        return deduplicate

    async def abandoned(self, msg: Message) -> None:
        """The router gives ``msg`` back after the handler succeeded (its results could
        not be published): forget its key, so the redelivery is processed."""
        await self.store.discard(_scoped(self.config.key(msg)))


def _scoped(key: str) -> str:
    """``key`` within the handler being run (as it is outside a router)."""
    info = current_handler()
    return key if info is None else f"{info.name}\x1f{key}"
