"""The Message: the unit every publisher, subscriber and handler works with."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["Message", "new_message_id"]

_PENDING: Final = 0
_ACKED: Final = 1
_NACKED: Final = 2

SettleCallback = Callable[["Message", bool], "bool | None"]
"""Tells the backend of an ack (True) or nack; returns False when its subscription
no longer takes it (closed: the message was handed back), else None."""


_POOL_SIZE: Final = 16 * 256
_pool = b""
_pos = _POOL_SIZE


def _forget_pool() -> None:
    # A forked child must not hand out the ids left in its parent's pool.
    global _pool, _pos
    _pool, _pos = b"", _POOL_SIZE


os.register_at_fork(after_in_child=_forget_pool)


def new_message_id() -> str:
    """Return a new random 128-bit id as 32 lowercase hex characters.

    The bytes come from ``os.urandom``, drawn 4 KiB at a time (one system call per
    256 ids); the pool is discarded in a forked child.
    """
    global _pool, _pos
    pos = _pos
    if pos >= _POOL_SIZE:
        _pool, pos = os.urandom(_POOL_SIZE), 0
    _pos = pos + 16
    return _pool[pos : pos + 16].hex()


class Message:
    """A message: an ``id``, string ``metadata`` and a ``payload`` of bytes.

    Contract (shared by every backend):

    * ``id`` is a string chosen by the publisher (a random one when omitted). It
      travels unchanged to every subscriber; backends never rewrite it, so it is
      the key a receiver uses to drop duplicates.
    * ``metadata`` is a ``dict[str, str]`` that arrives intact (keys and values are
      strings; anything else is rejected with ``TypeError`` at construction).
    * ``payload`` is ``bytes`` and arrives byte for byte.
    * A received message is settled exactly once: :meth:`ack` or :meth:`nack`. Both
      are idempotent (a second ``ack()`` is a no-op that returns ``True``) and
      mutually exclusive (``ack()`` after ``nack()`` returns ``False`` and changes
      nothing, and vice versa). ``nack()`` asks the backend to deliver the message
      again; a message never settled is redelivered after its consumer goes away
      (at-least-once). Settling is synchronous and cheap: backends batch the work
      and flush it at the latest on ``close()``.
    * A message built by the user (not received) can be acked and nacked too; that
      only changes its state, which makes ``Message`` usable in handler unit tests.
    """

    __slots__ = ("_on_settle", "_state", "id", "metadata", "payload")

    id: str
    metadata: dict[str, str]
    payload: bytes

    def __init__(
        self,
        payload: bytes = b"",
        metadata: Mapping[str, str] | None = None,
        *,
        id: str | None = None,
    ) -> None:
        if not isinstance(payload, bytes):
            if isinstance(payload, bytearray | memoryview):
                payload = bytes(payload)
            else:
                raise TypeError(
                    f"Message payload must be bytes, not {type(payload).__name__} "
                    "(encode text first, e.g. text.encode())"
                )
        if id is None:
            id = new_message_id()
        elif not isinstance(id, str) or not id:
            raise TypeError("Message id must be a non-empty str")
        md: dict[str, str] = {}
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise TypeError(
                    f"Message metadata must be a mapping of str to str, "
                    f"not {type(metadata).__name__}"
                )
            for key, value in metadata.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError(
                        f"Message metadata must map str to str; got {key!r}: {type(value).__name__}"
                    )
                md[key] = value
        self.id = id
        self.metadata = md
        self.payload = payload
        self._state = _PENDING
        self._on_settle: SettleCallback | None = None

    @classmethod
    def _received(
        cls,
        id: str,
        metadata: dict[str, str],
        payload: bytes,
        on_settle: SettleCallback | None,
    ) -> Message:
        """Build a delivered message without validation (for backends; trusted input)."""
        msg = cls.__new__(cls)
        msg.id = id
        msg.metadata = metadata
        msg.payload = payload
        msg._state = _PENDING
        msg._on_settle = on_settle
        return msg

    def ack(self) -> bool:
        """Acknowledge the message: it was processed and must not be delivered again.

        Returns ``True`` if the message is acked (now or already), ``False`` if it
        had been nacked before, or its subscription closed and handed it back (it is
        delivered again; it counts as nacked), in which case nothing changes.
        """
        state = self._state
        if state == _PENDING:
            self._state = _ACKED
            cb = self._on_settle
            if cb is not None:
                self._on_settle = None
                if cb(self, True) is False:  # handed back when its subscription closed
                    self._state = _NACKED
                    return False
            return True
        return state == _ACKED

    def nack(self) -> bool:
        """Negatively acknowledge: the message is to be delivered again.

        Returns ``True`` if the message is nacked (now or already), ``False`` if it
        had been acked before, in which case nothing changes.
        """
        state = self._state
        if state == _PENDING:
            self._state = _NACKED
            cb = self._on_settle
            if cb is not None:
                self._on_settle = None
                cb(self, False)
            return True
        return state == _NACKED

    def _release(self) -> None:
        """Its subscription handed it back (closed): a later ack() changes nothing and
        returns False, as after a nack."""
        self._on_settle = None
        if self._state == _PENDING:
            self._state = _NACKED

    @property
    def acked(self) -> bool:
        """Whether :meth:`ack` has been called."""
        return self._state == _ACKED

    @property
    def nacked(self) -> bool:
        """Whether :meth:`nack` has been called."""
        return self._state == _NACKED

    @property
    def settled(self) -> bool:
        """Whether the message has been acked or nacked."""
        return self._state != _PENDING

    def copy(self) -> Message:
        """Return an unsettled copy with the same id, a copy of the metadata and the payload.

        Use it to publish a received message onward (e.g. to a poison topic).
        """
        return Message._received(self.id, dict(self.metadata), self.payload, None)

    def __repr__(self) -> str:
        state = ("pending", "acked", "nacked")[self._state]
        return (
            f"Message(id={self.id!r}, metadata={self.metadata!r}, "
            f"payload=<{len(self.payload)} bytes>, {state})"
        )
