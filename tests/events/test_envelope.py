"""Event envelope: JSON form, validation, Event <-> Message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from pydantic import BaseModel, ValidationError

from eventmill import Message
from eventmill.errors import EventValidationError
from eventmill.events import Event, EventMetadata, EventSource, PaymentProcessed, new_event_id
from tests.events.strategies import events

SEED_EVENT = {
    "id": "evt_razorpay_1642678800000",
    "event_name": "razorpay.payment.captured",
    "source": "razorpay",
    "user_id": "user_123",
    "payload": {"payment": {"id": "pay_456", "amount": 50000}},
    "metadata": {"version": "1.0", "correlation_id": "corr_456", "trace_id": "trace_789"},
    "created_at": "2024-01-20T10:30:00Z",
}


def test_the_seed_example_parses_and_serializes_back() -> None:
    event = Event.from_json(orjson.dumps(SEED_EVENT))
    assert event.id == "evt_razorpay_1642678800000"
    assert event.source == EventSource.RAZORPAY
    assert event.created_at == datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
    assert event.metadata == EventMetadata(correlation_id="corr_456", trace_id="trace_789")
    out = orjson.loads(event.to_json())
    assert out == {
        **SEED_EVENT,
        "metadata": {**SEED_EVENT["metadata"], "headers": {}, "retry_count": 0},
        "processed_at": None,
    }
    assert list(out) == [
        "id",
        "event_name",
        "source",
        "user_id",
        "payload",
        "metadata",
        "created_at",
        "processed_at",
    ]


def test_to_json_matches_pydantic_json_mode() -> None:
    event = Event.from_dict(SEED_EVENT)
    assert orjson.loads(event.to_json()) == orjson.loads(event.model_dump_json())


def test_defaults() -> None:
    before = datetime.now(UTC)
    event = Event(event_name="user.created")
    assert event.id.startswith("evt_")
    assert len(event.id) == 30
    assert event.source == "internal"
    assert event.user_id is None
    assert event.payload == {}
    assert event.metadata == EventMetadata()
    assert event.metadata.version == "1.0"
    assert before <= event.created_at <= datetime.now(UTC)
    assert event.processed_at is None


def test_new_event_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    first, later = ids[0], new_event_id()
    assert first[:14] <= later[:14]  # the time prefix (48 bits) never goes backwards


def test_times_are_normalized_to_utc() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    event = Event(event_name="a", created_at=datetime(2024, 1, 20, 16, 0, tzinfo=ist))
    assert event.created_at == datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
    assert event.created_at.utcoffset() == timedelta(0)
    naive = Event(event_name="a", created_at=datetime(2024, 1, 20, 10, 30))
    assert naive.created_at.tzinfo is not None
    assert b'"created_at":"2024-01-20T10:30:00Z"' in naive.to_json()


def test_a_model_payload_is_dumped_to_json() -> None:
    payload = PaymentProcessed(
        payment_id="pay_1",
        user_id="u1",
        amount=500.0,
        currency="INR",
        status="ok",
        gateway="razorpay",
        processed_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    event = Event(event_name="payment.processed", user_id=7, payload=payload)  # type: ignore[arg-type]
    assert event.user_id == "7"
    assert event.payload["processed_at"] == "2024-01-01T00:00:00Z"
    assert Event.from_json(event.to_json()) == event


class _NotJson(BaseModel):
    pass


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"source": "internal"}, "event_name"),
        ({"event_name": "bad name"}, "event_name"),
        ({"event_name": "a*"}, "event_name"),
        ({"event_name": "a", "source": "Razorpay"}, "source"),
        ({"event_name": "a", "source": "has space"}, "source"),
        ({"event_name": "a", "user_id": ""}, "user_id"),
        ({"event_name": "a", "user_id": "a\x00b"}, "user_id"),
        ({"event_name": "a", "id": "evt with space"}, "id"),
        ({"event_name": "a", "metadata": {"retry_count": -1}}, "metadata.retry_count"),
        ({"event_name": "a", "created_at": "yesterday"}, "created_at"),
    ],
)
def test_invalid_events_name_the_failing_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(EventValidationError) as info:
        Event.from_dict(data)
    assert info.value.field == field
    assert info.value.errors[0]["field"] == field
    with pytest.raises(EventValidationError):
        Event.from_json(orjson.dumps(data))


def test_validation_errors_never_echo_input_values() -> None:
    with pytest.raises(EventValidationError) as info:
        Event.from_dict({"event_name": "a", "source": "SECRET-VALUE-123"})
    assert "SECRET-VALUE-123" not in str(info.value)
    assert "SECRET-VALUE-123" not in repr(info.value.errors)


@pytest.mark.parametrize("data", [b"not json", b"[1,2]", b"", b'"str"'])
def test_non_object_input_is_a_validation_error(data: bytes) -> None:
    with pytest.raises(EventValidationError):
        Event.from_json(data)


def test_unknown_keys_are_ignored() -> None:
    event = Event.from_dict({**SEED_EVENT, "extra": 1, "metadata": {"unknown": 2}})
    assert not hasattr(event, "extra")


def test_to_message_carries_routing_metadata() -> None:
    event = Event.from_dict(SEED_EVENT)
    msg = event.to_message()
    assert isinstance(msg, Message)
    assert msg.id == event.id
    assert msg.metadata == {
        "event_name": "razorpay.payment.captured",
        "source": "razorpay",
        "user_id": "user_123",
        "partition_key": "user_123",
        "correlation_id": "corr_456",
    }
    assert msg.payload == event.to_json()
    assert not msg.settled


def test_to_message_without_user_or_correlation() -> None:
    msg = Event(event_name="system.tick", source="system").to_message()
    assert msg.metadata == {"event_name": "system.tick", "source": "system"}


def test_from_message_rejects_a_non_event_payload() -> None:
    with pytest.raises(EventValidationError):
        Event.from_message(Message(b'{"hello": "world"}'))


def test_unserializable_payload_raises_validation_error() -> None:
    event = Event(event_name="a", payload={"x": object()})
    with pytest.raises(EventValidationError) as info:
        event.to_message()
    assert info.value.field == "payload"


@given(events)
def test_event_message_round_trip(event: Event) -> None:
    msg = event.to_message()
    back = Event.from_message(msg)
    assert back == event
    assert back.to_json() == msg.payload
    assert msg.id == event.id
    assert msg.metadata["event_name"] == event.event_name
    assert msg.metadata["source"] == event.source
    assert msg.metadata.get("partition_key") == event.user_id
    # a copy delivered by a backend decodes the same
    delivered = Message._received(msg.id, dict(msg.metadata), bytes(msg.payload), None)
    assert Event.from_message(delivered) == event


def _ulid_reference(n: int) -> str:
    """The ULID text of the 128-bit ``n``, five bits at a time (the plain algorithm)."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(alphabet[(n >> (5 * i)) & 31] for i in reversed(range(26)))


@pytest.mark.parametrize("fill", [b"\x00" * 10, b"\xff" * 10, bytes(range(10))])
def test_new_event_id_is_the_ulid_of_time_and_randomness(
    fill: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eventmill.events.envelope as envelope

    ms = 1_700_000_000_123
    monkeypatch.setattr(envelope.os, "urandom", lambda size: fill[:size])
    monkeypatch.setattr(envelope.time, "time_ns", lambda: ms * 1_000_000 + 999)
    expected = _ulid_reference(ms << 80 | int.from_bytes(fill, "big"))
    assert new_event_id() == "evt_" + expected


_PART_VALUES: list[dict[str, object]] = [
    {"event_name": "razorpay.payment.captured", "source": "razorpay", "user_id": "user_1"},
    {"event_name": "a", "source": "gh-1_x", "user_id": None},
    {"event_name": "x" * 200, "source": "a" * 64, "user_id": "é" * 256},
    {"event_name": "bad name", "source": "razorpay", "user_id": None},
    {"event_name": "x" * 201, "source": "razorpay", "user_id": None},
    {"event_name": "ok", "source": "Razorpay", "user_id": None},
    {"event_name": "ok", "source": "a" * 65, "user_id": None},
    {"event_name": "ok", "source": "razorpay", "user_id": "line\nbreak"},
    {"event_name": "ok", "source": "razorpay", "user_id": "x" * 257},
    {"event_name": "ok", "source": "razorpay", "user_id": ""},
    {"event_name": "ok", "source": EventSource.RAZORPAY, "user_id": None},
]
_PART_TIMES = [
    datetime(2024, 1, 20, 10, 30, tzinfo=UTC),
    datetime(2024, 1, 20, 10, 30),
    datetime(2024, 1, 20, 10, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]


@pytest.mark.parametrize("created_at", _PART_TIMES)
@pytest.mark.parametrize("parts", _PART_VALUES)
@pytest.mark.parametrize("payload", [{"a": [1, {"b": None}]}, [], "text", PaymentProcessed])
def test_from_parts_equals_the_validated_constructor(
    parts: dict[str, object], created_at: datetime, payload: object
) -> None:
    if payload is PaymentProcessed:
        payload = PaymentProcessed(
            payment_id="p", user_id="u", amount=1.5, currency="INR", status="ok",
            processed_at=created_at,
        )  # fmt: skip
    kwargs = {**parts, "created_at": created_at, "payload": payload}

    def build(factory: object) -> object:
        try:
            event = factory(**kwargs)  # type: ignore[operator]
        except Exception as exc:  # pydantic.ValidationError from both, or neither
            return type(exc), str(exc)
        dumped = event.model_dump()
        dumped.pop("id")
        return dumped, event.model_fields_set, event.created_at.tzinfo, type(event.source)

    assert build(Event.from_parts) == build(Event)


def test_a_number_is_unix_seconds_however_large() -> None:
    """pydantic reads a number past 2e10 as milliseconds: ``-62135596900`` (a second
    before year 1) became 1968. Every number is seconds; beyond the years 1-9999, 422."""
    assert Event(event_name="a.b", created_at=1705746600).created_at == datetime(
        2024, 1, 20, 10, 30, tzinfo=UTC
    )
    for seconds in (-62135596900, 253402300800, 1705746600000):
        with pytest.raises(ValidationError, match="outside the years 1-9999 in UTC"):
            Event(event_name="a.b", created_at=seconds)
