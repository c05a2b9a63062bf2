"""EventRegistry and EventHandlers (typed handlers for the Router)."""

from __future__ import annotations

import fnmatch
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from eventmill import Message
from eventmill.errors import ConfigurationError, EventValidationError, UnknownEventError
from eventmill.events import (
    BUILTIN_MODELS,
    Event,
    EventHandlers,
    EventRegistry,
    RazorpayPaymentEvent,
    RazorpayRefundEvent,
    UserCreated,
    compile_pattern,
    validate_pattern,
)
from tests.payloads import payment_event, refund_event


class Generic(BaseModel):
    kind: str


class Specific(BaseModel):
    amount: int


def test_the_most_specific_entry_wins() -> None:
    registry = EventRegistry()
    registry.register("shop.*", Generic)
    registry.register("shop.order.*", Specific)
    registry.register("shop.order.created", UserCreated)
    assert registry.model_for("shop.order.created") is UserCreated
    assert registry.model_for("shop.order.paid") is Specific
    assert registry.model_for("shop.cart.updated") is Generic
    assert registry.model_for("shop") is None
    assert registry.model_for("other.order.paid") is None
    assert [p for p, _ in registry.entries()] == ["shop.order.created", "shop.order.*", "shop.*"]


def test_equally_specific_patterns_keep_registration_order() -> None:
    registry = EventRegistry()
    registry.register("a.*", Generic)
    registry.register("*.b", Specific)
    assert registry.model_for("a.b") is Generic


def test_wildcard_matches_across_dots_and_is_literal_otherwise() -> None:
    regex = compile_pattern("razorpay.*.captured")
    assert regex.fullmatch("razorpay.payment.captured")
    assert regex.fullmatch("razorpay.a.b.captured")
    assert not regex.fullmatch("razorpayXpayment.captured")
    assert compile_pattern("*").fullmatch("anything.at.all")


@given(
    st.text("ab.*", min_size=1, max_size=8).filter(lambda p: p[0] != "."),
    st.text("ab.", min_size=1, max_size=10).filter(lambda n: n[0] != "."),
)
def test_a_pattern_matches_exactly_what_the_glob_does(pattern: str, name: str) -> None:
    assert (compile_pattern(pattern).fullmatch(name) is not None) == fnmatch.fnmatchcase(
        name, pattern
    )


@pytest.mark.parametrize(
    ("pattern", "name"),
    [("*" * 12 + "z", "razorpay.payment.captured.x"), ("*a" * 60 + "*z", "a" * 199 + "b")],
)
def test_a_pattern_takes_linear_time_however_many_stars(pattern: str, name: str) -> None:
    """Any user may subscribe with a pattern (realtime, endpoints) and the hub matches
    every event against it on the event loop: as ``a.*b.*…``, these took seconds to
    minutes (exponential backtracking). A bound far above linear time, far below that."""
    started = time.perf_counter()
    assert compile_pattern(pattern).fullmatch(name) is None
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("pattern", ["", "a b", "a?", "a[b]", "x" * 201])
def test_invalid_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(ConfigurationError):
        EventRegistry().register(pattern, Generic)


def test_a_refused_pattern_is_named_short_with_its_length_limit() -> None:
    """A 5,000-character pattern was echoed whole, and the message gave no length."""
    with pytest.raises(ConfigurationError) as refused:
        validate_pattern("x" * 5000)
    message = str(refused.value)
    assert "1-200 of letters, digits" in message
    assert "'" + "x" * 60 + "'…" in message
    assert "x" * 61 not in message


def test_duplicate_patterns_and_non_models_are_rejected() -> None:
    registry = EventRegistry()
    registry.register("a.*", Generic)
    with pytest.raises(ConfigurationError):
        registry.register("a.*", Specific)
    with pytest.raises(ConfigurationError):
        registry.register("b", dict)  # type: ignore[arg-type]


def test_validate_returns_the_typed_payload() -> None:
    registry = EventRegistry.default()
    event = Event(event_name="razorpay.payment.captured", payload=payment_event())
    parsed = registry.validate(event)
    assert isinstance(parsed, RazorpayPaymentEvent)
    assert parsed.payment.amount == 100


def test_validate_names_the_failing_payload_field() -> None:
    registry = EventRegistry.default()
    body = payment_event(amount="a lot")
    event = Event(event_name="razorpay.payment.captured", payload=body)
    with pytest.raises(EventValidationError) as info:
        registry.validate(event)
    assert info.value.field == "payload.payload.payment.entity.amount"
    assert "a lot" not in str(info.value)


def test_unknown_names_are_accepted_or_rejected_by_configuration() -> None:
    event = Event(event_name="never.registered", payload=[1, 2])
    assert EventRegistry.default().validate(event) is None
    strict = EventRegistry.default(allow_unknown=False)
    with pytest.raises(UnknownEventError) as info:
        strict.validate(event)
    assert info.value.field == "event_name"
    assert isinstance(info.value, EventValidationError)


def test_default_registry_holds_the_builtin_models() -> None:
    registry = EventRegistry.default()
    for name, model in BUILTIN_MODELS.items():
        assert registry.model_for(name) is model


def test_parse_with_an_explicit_model() -> None:
    event = Event(event_name="x", payload={"kind": "k"})
    assert EventRegistry().parse(event, Generic) == Generic(kind="k")


# -- typed handlers -------------------------------------------------------------------


async def test_handlers_dispatch_on_event_name_with_typed_payloads() -> None:
    handlers = EventHandlers(EventRegistry.default())
    calls: list[tuple[str, Any]] = []

    @handlers.on("razorpay.payment.*")
    async def on_payment(event: Event, payload: RazorpayPaymentEvent) -> None:
        calls.append(("payment", payload.payment.id))

    @handlers.on("razorpay.refund.processed")
    async def on_refund(event: Event, payload: RazorpayRefundEvent) -> None:
        calls.append(("refund", payload.refund.id))

    @handlers.on("user.*")
    async def on_user(event: Event) -> None:
        calls.append(("user", event.user_id))

    payment = Event(event_name="razorpay.payment.captured", payload=payment_event())
    refund = Event(event_name="razorpay.refund.processed", payload=refund_event())
    user = Event(event_name="user.deleted", user_id="u9")
    for event in (payment, refund, user):
        assert await handlers(event.to_message()) is None
    assert calls == [
        ("payment", "pay_DESlfW9H8K9uqM"),
        ("refund", "rfnd_FgRAHdNOM4ZVbO"),
        ("user", "u9"),
    ]


async def test_handler_model_falls_back_to_the_registry_then_raw_payload() -> None:
    registry = EventRegistry()
    registry.register("shop.*", Generic)
    handlers = EventHandlers(registry)
    got: list[Any] = []

    @handlers.on("*")
    async def anything(event: Event, payload):  # type: ignore[no-untyped-def]
        got.append(payload)

    await handlers(Event(event_name="shop.x", payload={"kind": "k"}).to_message())
    await handlers(Event(event_name="other", payload=[1]).to_message())
    assert got == [Generic(kind="k"), [1]]


async def test_explicit_model_overrides_the_annotation() -> None:
    handlers = EventHandlers()
    got: list[Any] = []

    async def handler(event: Event, payload: Any) -> None:
        got.append(payload)

    handlers.add("a", handler, Specific)
    await handlers(Event(event_name="a", payload={"amount": 3}).to_message())
    assert got == [Specific(amount=3)]


async def test_handlers_return_events_as_messages() -> None:
    handlers = EventHandlers()

    @handlers.on("in.one")
    async def one(event: Event) -> Event:
        return Event(event_name="out.one", user_id=event.user_id)

    @handlers.on("in.many")
    async def many(event: Event) -> list[Event | Message]:
        return [Event(event_name="out.a"), Message(b"raw")]

    out = await handlers(Event(event_name="in.one", user_id="u1").to_message())
    assert isinstance(out, Message)
    assert Event.from_message(out).event_name == "out.one"
    assert out.metadata["partition_key"] == "u1"
    outs = await handlers(Event(event_name="in.many").to_message())
    assert isinstance(outs, list)
    assert [type(m) for m in outs] == [Message, Message]
    assert outs[1].payload == b"raw"


async def test_invalid_payload_and_non_events_raise_so_the_router_nacks() -> None:
    handlers = EventHandlers()

    @handlers.on("a")
    async def handler(event: Event, payload: Specific) -> None:
        raise AssertionError("not reached")

    with pytest.raises(EventValidationError) as info:
        await handlers(Event(event_name="a", payload={"amount": "x"}).to_message())
    assert info.value.field == "payload.amount"
    with pytest.raises(EventValidationError):
        await handlers(Message(b"not an event"))


async def test_unmatched_events_are_acked_or_raise() -> None:
    assert await EventHandlers()(Event(event_name="nobody.cares").to_message()) is None
    strict = EventHandlers(unmatched="raise")
    with pytest.raises(UnknownEventError):
        await strict(Event(event_name="nobody.cares").to_message())


def test_bad_handler_signatures_are_rejected() -> None:
    handlers = EventHandlers()

    def sync_handler(event: Event) -> None:
        pass

    async def no_args() -> None:
        pass

    async def three(a: Event, b: Any, c: Any) -> None:
        pass

    for func in (sync_handler, no_args, three):
        with pytest.raises(ConfigurationError):
            handlers.add("x", func)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        EventHandlers(unmatched="drop")  # type: ignore[arg-type]
