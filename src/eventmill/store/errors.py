"""The store's errors (layer 4), below the one root :class:`~eventmill.EventmillError`."""

from __future__ import annotations

from eventmill.errors import EventmillError

__all__ = ["DuplicateEventError", "InvalidCursorError", "StoreError", "StoreUnavailableError"]


class StoreError(EventmillError):
    """Base of event store errors."""


class StoreUnavailableError(StoreError):
    """The store's database cannot be reached."""


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor is malformed or was made for a different query order."""


class DuplicateEventError(StoreError):
    """An event with the same (source, external id) is already stored."""
