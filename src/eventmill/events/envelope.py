"""The event envelope: :class:`Event` and :class:`EventMetadata`, and Event <-> Message.

The JSON form of an event (on the bus, in the store, over HTTP, WebSocket and SSE)::

    {
      "id": "evt_01J5Q8Z6R1W3KXQ3M9V7T2B4NC",
      "event_name": "razorpay.payment.captured",
      "source": "razorpay",
      "user_id": "user_123",
      "payload": {"...": "..."},
      "metadata": {"version": "1.0", "correlation_id": "corr_456", "trace_id": "trace_789",
                   "headers": {}, "retry_count": 0},
      "created_at": "2024-01-20T10:30:00Z",
      "processed_at": null
    }

Times are always UTC (a naive time is taken as UTC; another offset is converted).
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final

import orjson
import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from eventmill.errors import EventValidationError
from eventmill.message import Message

__all__ = [
    "EVENT_NAME_RE",
    "OUT_OF_RANGE",
    "SOURCE_RE",
    "USER_ID_RE",
    "Event",
    "EventMetadata",
    "EventSource",
    "UtcDatetime",
    "new_event_id",
    "to_utc",
    "validation_error",
]

EVENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}")
"""Event names: 1-200 characters of letters, digits, ``_ . : -`` (``*`` is the wildcard)."""

SOURCE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
"""Sources: 1-64 lowercase letters, digits, ``_`` and ``-`` (a source names a URL path)."""

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_PAIRS: Final = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
"""Every 10-bit value as two Crockford characters."""
_PAIR_SHIFTS: Final = tuple(range(120, -10, -10))


class EventSource(StrEnum):
    """The well-known sources. Any string matching :data:`SOURCE_RE` is a valid source
    too (``github``, ``stripe``, the names of configured webhook receivers)."""

    INTERNAL = "internal"
    """Published by the platform's own services (``POST /v1/events`` or the library)."""
    RAZORPAY = "razorpay"
    """A Razorpay webhook."""
    EXTERNAL = "external"
    """Another external system."""
    SYSTEM = "system"
    """eventmill itself."""


def new_event_id() -> str:
    """Return a new event id: ``evt_`` + 26 Crockford base32 characters (a ULID).

    The first 48 bits are the millisecond time, so ids sort roughly by creation time;
    the remaining 80 bits are random.
    """
    n = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    # 130 bits (the top two zero) as 13 pairs of characters, most significant first
    return "evt_" + "".join([_CROCKFORD_PAIRS[n >> shift & 1023] for shift in _PAIR_SHIFTS])


OUT_OF_RANGE: Final = "the time is outside the years 1-9999 in UTC"
"""Why :func:`to_utc` refuses a time."""


def to_utc(value: datetime) -> datetime:
    """``value`` as a time in UTC; a naive time is taken to be UTC already.

    Every time a caller gives (a filter, an event's ``created_at``) goes through here.
    Raises ``ValueError`` (:data:`OUT_OF_RANGE`) for a time outside the years 1-9999 in
    UTC, which ``datetime`` cannot hold: ``0001-01-01T00:00:00+01:00`` is in year 0
    there, ``9999-12-31T23:00:00-05:00`` in year 10000.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if value.utcoffset() != UTC.utcoffset(None):
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError(OUT_OF_RANGE) from None
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _from_seconds(value: Any) -> Any:
    """A number as Unix seconds, however large (pydantic reads one past 2e10 as
    milliseconds: ``-62135596900`` became 1968, ``253402300800`` 1978); ``ValueError``
    (:data:`OUT_OF_RANGE`) outside the years 1-9999."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(OUT_OF_RANGE) from None
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_from_seconds), AfterValidator(to_utc)]
"""A datetime field held in UTC (:func:`to_utc`; a number is Unix seconds; 422 outside
the years 1-9999 in UTC)."""


def _check_name(value: str) -> str:
    if EVENT_NAME_RE.fullmatch(value) is None:
        raise ValueError(
            "event_name must be 1-200 characters of letters, digits, '_', '.', ':', '-'"
        )
    return value


def _check_source(value: str) -> str:
    if SOURCE_RE.fullmatch(value) is None:
        raise ValueError("source must be 1-64 characters of lowercase letters, digits, '_', '-'")
    return str(value)


class EventMetadata(BaseModel):
    """Tracing and delivery metadata carried with every event. Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    version: str = Field(default="1.0", max_length=32)
    """Schema version of the payload (default ``"1.0"``)."""
    correlation_id: str = Field(default="", max_length=256)
    """Id shared by all events caused by one request (default empty)."""
    trace_id: str = Field(default="", max_length=256)
    """Distributed-tracing id (default empty)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Free-form string headers (default empty)."""
    retry_count: int = Field(default=0, ge=0)
    """How often processing was retried (default 0)."""


USER_ID_RE: Final = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
"""User ids: 1-256 characters without control characters (``Event.user_id``'s field
pattern; an end user's JWT ``sub`` must match it too)."""
_PARTS: Final = frozenset({"event_name", "source", "user_id", "payload", "created_at"})


class Event(BaseModel):
    """One event: what happened (``event_name``), where it came from (``source``), for
    whom (``user_id``), with what data (``payload``).

    ``payload`` is any JSON value (usually an object); a pydantic model given as
    payload is dumped to its JSON form. ``id`` defaults to :func:`new_event_id` and
    ``created_at`` to now. Unknown top-level keys are ignored. An ``id`` is 1-128
    characters of letters, digits, ``_ . : -``; a ``user_id`` 1-256 characters without
    control characters.
    """

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_event_id, pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")
    event_name: Annotated[str, AfterValidator(_check_name)]
    source: Annotated[str, AfterValidator(_check_source)] = EventSource.INTERNAL.value
    user_id: str | None = Field(default=None, pattern=r"^[^\x00-\x1f\x7f]{1,256}$")  # USER_ID_RE
    payload: Any = Field(default_factory=dict)
    metadata: EventMetadata = Field(default_factory=EventMetadata)
    created_at: UtcDatetime = Field(default_factory=_now)
    processed_at: UtcDatetime | None = None

    @field_validator("payload", mode="before")
    @classmethod
    def _dump_model_payload(cls, value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return value

    @field_validator("user_id", mode="before")
    @classmethod
    def _user_id_to_str(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @classmethod
    def from_parts(
        cls,
        *,
        event_name: str,
        source: str,
        user_id: str | None,
        payload: Any,
        created_at: datetime,
    ) -> Event:
        """Return ``Event(event_name=..., source=..., user_id=..., payload=..., created_at=...)``
        (a new id, default metadata), built without pydantic's validation pass when every
        value is already in the form validation would leave it in: exact ``str`` values
        matching the field rules, a payload that is not a model (e.g. parsed JSON), a UTC
        ``created_at``. Anything else is validated as usual (raising
        :class:`pydantic.ValidationError`). The result is the same either way, down to
        ``model_fields_set``.
        """
        if (
            type(event_name) is str
            and type(source) is str
            and (user_id is None or type(user_id) is str)
            and type(created_at) is datetime
            and created_at.tzinfo is UTC
            and not isinstance(payload, BaseModel)
            and EVENT_NAME_RE.fullmatch(event_name) is not None
            and SOURCE_RE.fullmatch(source) is not None
            and (user_id is None or USER_ID_RE.fullmatch(user_id) is not None)
        ):
            # what BaseModel.model_construct does, without its per-field loop
            event = cls.__new__(cls)
            _set = object.__setattr__
            _set(
                event,
                "__dict__",
                {
                    "id": new_event_id(),
                    "event_name": event_name,
                    "source": source,
                    "user_id": user_id,
                    "payload": payload,
                    "metadata": EventMetadata(),
                    "created_at": created_at,
                    "processed_at": None,
                },
            )
            _set(event, "__pydantic_fields_set__", set(_PARTS))
            _set(event, "__pydantic_extra__", None)
            _set(event, "__pydantic_private__", None)
            return event
        return cls(
            event_name=event_name,
            source=source,
            user_id=user_id,
            payload=payload,
            created_at=created_at,
        )

    # -- JSON -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form as a dict (datetimes stay ``datetime`` objects)."""
        md = self.metadata
        return {
            "id": self.id,
            "event_name": self.event_name,
            "source": self.source,
            "user_id": self.user_id,
            "payload": self.payload,
            "metadata": {
                "version": md.version,
                "correlation_id": md.correlation_id,
                "trace_id": md.trace_id,
                "headers": md.headers,
                "retry_count": md.retry_count,
            },
            "created_at": self.created_at,
            "processed_at": self.processed_at,
        }

    def to_json(self) -> bytes:
        """Return the JSON form as UTF-8 bytes (orjson; times as RFC 3339 with ``Z``)."""
        try:
            return orjson.dumps(self.to_dict(), option=orjson.OPT_UTC_Z)
        except TypeError as exc:
            raise EventValidationError(
                f"event payload is not JSON-serializable: {exc}", field="payload"
            ) from exc

    @classmethod
    def from_json(cls, data: bytes | str) -> Event:
        """Parse and validate the JSON form; raise :class:`EventValidationError`."""
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EventValidationError(f"event is not valid JSON: {exc.msg}") from exc
        try:
            return cls.model_validate(decoded)  # faster than model_validate_json here
        except pydantic.ValidationError as exc:
            raise validation_error(exc, "invalid event") from exc

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate a decoded JSON object; raise :class:`EventValidationError`."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, "invalid event") from exc

    # -- Message --------------------------------------------------------------------

    def to_message(self) -> Message:
        """Return a :class:`Message` carrying this event.

        The message id is the event id (so receivers drop duplicates by it), the
        payload is :meth:`to_json`, and the metadata holds ``event_name``, ``source``,
        ``user_id`` and ``partition_key`` (both the user id, when there is one, so
        backends keep one user's events in order) and ``correlation_id`` when set.
        """
        metadata = {"event_name": self.event_name, "source": self.source}
        if self.user_id is not None:
            metadata["user_id"] = self.user_id
            metadata["partition_key"] = self.user_id
        if self.metadata.correlation_id:
            metadata["correlation_id"] = self.metadata.correlation_id
        return Message._received(self.id, metadata, self.to_json(), None)

    @classmethod
    def from_message(cls, message: Message) -> Event:
        """Decode the event a message carries (its payload is authoritative).

        Raises :class:`EventValidationError` when the payload is not a valid event.
        """
        return cls.from_json(message.payload)


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def validation_error(
    exc: pydantic.ValidationError, what: str, prefix: str = ""
) -> EventValidationError:
    """Translate a pydantic error into :class:`EventValidationError` without input values.

    ``prefix`` is prepended to every field path (e.g. ``"payload"``).
    """
    errors = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = _loc(err["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        errors.append({"field": path, "message": str(err["msg"]), "type": str(err["type"])})
    first = errors[0] if errors else {"field": prefix, "message": "invalid"}
    field = first["field"] or None
    where = f" at {field}" if field else ""
    return EventValidationError(f"{what}{where}: {first['message']}", field=field, errors=errors)
