"""sqlite3's errors, mapped to eventmill's at the sqlite:// boundary (the writer thread).

A failed transaction fails every operation of its batch, each with the error of its
kind (:data:`_ERRORS`), ``raise ... from`` the sqlite3 error. Whether an error means
"the file is locked" is :func:`eventmill._sqlite.is_locked`.
"""

from __future__ import annotations

from typing import Final

from eventmill.errors import BackendUnavailableError, PublishError, PubSubError, SubscribeError
from eventmill.pubsub.sqlite._ops import Fetch, Head, Join, Op, Publish, Read

__all__ = ["translate"]

#: The error of a failed operation, by its kind, and what it says (others: unavailable).
_ERRORS: Final[dict[type[Op], tuple[type[PubSubError], str]]] = {
    Publish: (PublishError, "publish failed, nothing was committed"),
    Fetch: (SubscribeError, "subscription query failed"),
    Read: (SubscribeError, "subscription query failed"),
    Join: (SubscribeError, "subscription query failed"),
    Head: (SubscribeError, "subscription query failed"),
}
_OTHER: Final = (BackendUnavailableError, "operation failed")


def translate(op: Op, exc: Exception) -> PubSubError:
    """The eventmill error for ``op`` failed with ``exc`` (``exc`` as its cause)."""
    kind, what = _ERRORS.get(type(op), _OTHER)
    err = kind(f"sqlite:// {what}: {exc}")
    err.__cause__ = exc
    return err
