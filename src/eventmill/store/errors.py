"""The store's errors (layer 4), below the one root :class:`~eventmill.EventmillError`."""

from __future__ import annotations

from typing import Literal

from eventmill.errors import EventmillError, EventValidationError

__all__ = [
    "DuplicateEventError",
    "InvalidCursorError",
    "InvalidValueError",
    "StoreError",
    "StoreUnavailableError",
]


class StoreError(EventmillError):
    """Base of event store errors."""


class StoreUnavailableError(StoreError):
    """The store's database cannot be reached."""


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor is malformed or was made for a different query order."""


class DuplicateEventError(StoreError):
    """An event with the same (source, external id) is already stored."""


ValueProblem = Literal["empty", "too_long", "control_character", "not_text", "not_json"]
"""Why a value was refused (:attr:`InvalidValueError.problem`)."""


class InvalidValueError(StoreError, EventValidationError):
    """A value the store cannot hold, refused before it reaches the database: the
    caller's error (the service answers 422 ``validation_failed``), the same on SQLite
    and PostgreSQL, and nothing of the call is stored.

    ``field`` names the value (``"external_id"``, ``"id"``, ``"source"``,
    ``"event_name"``, ``"user_id"``, ``"payload"``, ``"metadata"``); ``problem`` says
    what is wrong with it (``"empty"``, ``"too_long"``, ``"control_character"``,
    ``"not_text"``, ``"not_json"``); ``limit`` is the most characters the field holds
    (``None`` when length is not the problem). The message names the field and the
    rule, never the value. It is both a :class:`StoreError` and an
    :class:`~eventmill.EventValidationError` (``errors`` holds the one failure).
    """

    def __init__(
        self, message: str, *, field: str, problem: ValueProblem, limit: int | None = None
    ) -> None:
        super().__init__(
            message,
            field=field,
            errors=[{"field": field, "message": message, "type": problem}],
        )
        self.problem: ValueProblem = problem
        self.limit = limit
