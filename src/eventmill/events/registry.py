"""The event type registry and typed handlers.

An :class:`EventRegistry` maps event names, or patterns where ``*`` matches any run
of characters (dots included: ``razorpay.payment.*``, ``*.created``), to pydantic
models of the payload. The most specific entry wins: an exact name first, then the
pattern with the most literal characters, then the one registered first.

:class:`EventHandlers` turns ``async def on_paid(event: Event, payload: Model)``
functions into one Router handler that dispatches on the event name.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Literal, TypeVar, cast, get_type_hints, overload

import pydantic
from pydantic import BaseModel

from eventmill.errors import ConfigurationError, EventValidationError, UnknownEventError
from eventmill.events.envelope import Event, validation_error
from eventmill.message import Message

__all__ = [
    "EventHandlers",
    "EventRegistry",
    "TypedHandler",
    "TypedHandlerResult",
    "compile_pattern",
    "validate_pattern",
]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
V = TypeVar("V")

_PATTERN = re.compile(r"[A-Za-z0-9_.:*\-]{1,200}")
_CACHE_LIMIT = 4096

TypedHandlerResult = Event | Message | Sequence[Event | Message] | None
"""What a typed handler returns: nothing, or events/messages to publish onward."""

TypedHandler = Callable[..., Awaitable[TypedHandlerResult]]
"""``async def handler(event: Event[, payload: Model]) -> TypedHandlerResult``."""

_HandlerResult = Message | Sequence[Message] | None


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid event name or ``*`` pattern, else raise
    :class:`~eventmill.ConfigurationError`."""
    if not isinstance(pattern, str) or _PATTERN.fullmatch(pattern) is None:
        shown = repr(
            pattern if not isinstance(pattern, str) or len(pattern) <= 60 else pattern[:60]
        )
        more = "…" if isinstance(pattern, str) and len(pattern) > 60 else ""
        raise ConfigurationError(
            f"invalid event name pattern {shown}{more}: 1-200 of letters, digits, "
            "'_', '.', ':', '-', '*'"
        )
    return pattern


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an event name pattern (``*`` = any run of characters) to a regex, for
    ``fullmatch``, that takes time linear in the name's length whatever the pattern.

    ``a*b*c`` as ``a.*b.*c`` backtracks exponentially in the number of stars on a name
    that does not match (``************z``: seconds for one 30-character name, the
    event loop held meanwhile). For ``*`` alone, matching each middle part at its
    leftmost place is always right (a later place only leaves less room for the rest),
    so each becomes an atomic lazy group, ``(?>.*?b)``, which never backtracks, and
    runs of stars are one star.
    """
    validate_pattern(pattern)
    parts = [re.escape(part) for part in re.sub(r"\*+", "*", pattern).split("*")]
    if len(parts) == 1:
        return re.compile(parts[0])
    middle = "".join(f"(?>.*?{part})" for part in parts[1:-1])
    return re.compile(f"{parts[0]}{middle}.*{parts[-1]}", re.DOTALL)


class _Table(Generic[V]):
    """Name/pattern -> value lookup with the registry's precedence rules and a bounded cache.

    The cache holds at most 4096 names; when full it is cleared (names are few in
    practice, and a miss only costs a scan of the patterns).
    """

    def __init__(self) -> None:
        self._exact: dict[str, V] = {}
        self._patterns: list[tuple[int, int, str, re.Pattern[str], V]] = []
        self._cache: dict[str, V | None] = {}

    def add(self, pattern: str, value: V) -> None:
        validate_pattern(pattern)
        if pattern in self._exact or any(p[2] == pattern for p in self._patterns):
            raise ConfigurationError(f"event name pattern {pattern!r} is already registered")
        if "*" not in pattern:
            self._exact[pattern] = value
        else:
            literal = len(pattern) - pattern.count("*")
            self._patterns.append(
                (-literal, len(self._patterns), pattern, compile_pattern(pattern), value)
            )
            self._patterns.sort(key=lambda p: (p[0], p[1]))
        self._cache.clear()

    def get(self, name: str) -> V | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        value = self._exact.get(name)
        if value is None:
            for _, _, _, regex, candidate in self._patterns:
                if regex.fullmatch(name):
                    value = candidate
                    break
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = value
        return value

    def items(self) -> list[tuple[str, V]]:
        return [*self._exact.items(), *((p[2], p[4]) for p in self._patterns)]


class EventRegistry:
    """Event name (or pattern) -> payload model.

    ``allow_unknown`` (default ``True``): whether :meth:`validate` accepts events
    whose name matches no entry (their payload is then any JSON); when ``False`` it
    raises :class:`~eventmill.UnknownEventError`.
    """

    def __init__(self, *, allow_unknown: bool = True) -> None:
        self.allow_unknown = allow_unknown
        self._table: _Table[type[BaseModel]] = _Table()

    @classmethod
    def default(cls, *, allow_unknown: bool = True) -> EventRegistry:
        """Return a registry holding the built-in models (see :mod:`eventmill.events.models`)."""
        from eventmill.events.models import BUILTIN_MODELS

        registry = cls(allow_unknown=allow_unknown)
        for pattern, model in BUILTIN_MODELS.items():
            registry.register(pattern, model)
        return registry

    def register(self, pattern: str, model: type[BaseModel]) -> None:
        """Map an event name or pattern to a payload model.

        Raises :class:`~eventmill.ConfigurationError` for an invalid or already
        registered pattern, or when ``model`` is not a pydantic model class.
        """
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(f"{model!r} is not a pydantic model class")
        self._table.add(pattern, model)

    def model_for(self, event_name: str) -> type[BaseModel] | None:
        """Return the model registered for ``event_name`` (most specific match), or ``None``."""
        return self._table.get(event_name)

    def entries(self) -> list[tuple[str, type[BaseModel]]]:
        """Return every ``(pattern, model)``: exact names first, then patterns by precedence."""
        return self._table.items()

    def validate(self, event: Event) -> BaseModel | None:
        """Check ``event.payload`` against the model for its name and return the parsed model.

        Returns ``None`` for an unknown name when unknown names are allowed. Raises
        :class:`~eventmill.UnknownEventError` when they are not, and
        :class:`~eventmill.EventValidationError` (``field`` = e.g.
        ``"payload.payment.entity.amount"``) when the payload does not match.
        """
        model = self._table.get(event.event_name)
        if model is None:
            if self.allow_unknown:
                return None
            raise UnknownEventError(f"unknown event name {event.event_name!r}", field="event_name")
        return _parse(model, event)

    def parse(self, event: Event, model: type[M]) -> M:
        """Parse ``event.payload`` as ``model``; raise :class:`~eventmill.EventValidationError`."""
        return _parse(model, event)


def _parse(model: type[M], event: Event) -> M:
    try:
        return model.model_validate(event.payload)
    except pydantic.ValidationError as exc:
        raise validation_error(
            exc, f"invalid payload for {event.event_name!r}", prefix="payload"
        ) from exc


class _Entry:
    __slots__ = ("func", "model", "wants_payload")

    def __init__(self, func: TypedHandler, model: type[BaseModel] | None, wants_payload: bool):
        self.func = func
        self.model = model
        self.wants_payload = wants_payload


def _payload_model(func: TypedHandler) -> tuple[bool, type[BaseModel] | None]:
    """Return (takes a payload argument, model from its annotation or None)."""
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not params or len(params) > 2:
        raise ConfigurationError(
            f"typed handler {getattr(func, '__name__', func)!r} must take "
            "(event) or (event, payload)"
        )
    if len(params) == 1:
        return False, None
    try:
        hints = get_type_hints(func)
        annotation = hints.get(params[1].name)
    except Exception:
        annotation = params[1].annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True, annotation
    return True, None


class EventHandlers:
    """A Router handler that dispatches each event to the typed function for its name.

    Usage::

        handlers = EventHandlers(EventRegistry.default())

        @handlers.on("razorpay.payment.*")
        async def on_payment(event: Event, payload: RazorpayPaymentEvent) -> None: ...

        router.add_handler("payments", "events", handlers, group="payments")

    The payload model of a function is, in order: the ``model`` given to :meth:`on`,
    the annotation of its second parameter, the registry's model for the event name;
    with none of these the raw payload is passed. A function with one parameter gets
    only the event. The most specific pattern wins (as in :class:`EventRegistry`);
    one function is called per event.

    A message that is not an event, or whose payload does not match the model,
    raises :class:`~eventmill.EventValidationError` (the router nacks; add a poison
    queue middleware to park it). An event no function matches is acked and ignored
    (``unmatched="ack"``, the default) or raises :class:`~eventmill.UnknownEventError`
    (``unmatched="raise"``). Events returned by a function are converted with
    :meth:`Event.to_message` and published to the handler's ``publish_topic``.
    """

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        unmatched: Literal["ack", "raise"] = "ack",
    ) -> None:
        if unmatched not in ("ack", "raise"):
            raise ConfigurationError("unmatched must be 'ack' or 'raise'")
        self.registry = registry
        self.unmatched = unmatched
        self._table: _Table[_Entry] = _Table()

    @overload
    def on(self, pattern: str) -> Callable[[T], T]: ...
    @overload
    def on(self, pattern: str, model: type[BaseModel]) -> Callable[[T], T]: ...
    def on(self, pattern: str, model: type[BaseModel] | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated function for ``pattern``."""

        def decorate(func: T) -> T:
            self.add(pattern, cast(TypedHandler, func), model)
            return func

        return decorate

    def add(self, pattern: str, func: TypedHandler, model: type[BaseModel] | None = None) -> None:
        """Register ``func`` for ``pattern`` (see the class docstring for the model rules)."""
        if not inspect.iscoroutinefunction(func) and not inspect.iscoroutinefunction(
            getattr(func, "__call__", None)  # noqa: B004
        ):
            raise ConfigurationError("typed handlers must be async functions")
        wants_payload, annotated = _payload_model(func)
        if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigurationError(f"{model!r} is not a pydantic model class")
        self._table.add(pattern, _Entry(func, model or annotated, wants_payload))

    async def __call__(self, msg: Message) -> _HandlerResult:
        event = Event.from_message(msg)
        entry = self._table.get(event.event_name)
        if entry is None:
            if self.unmatched == "raise":
                raise UnknownEventError(
                    f"no typed handler for event {event.event_name!r}", field="event_name"
                )
            return None
        if entry.wants_payload:
            model = entry.model
            if model is None and self.registry is not None:
                model = self.registry.model_for(event.event_name)
            payload: Any = event.payload if model is None else _parse(model, event)
            result = await entry.func(event, payload)
        else:
            result = await entry.func(event)
        return _to_messages(result)


def _to_messages(result: TypedHandlerResult) -> _HandlerResult:
    if result is None:
        return None
    if isinstance(result, Event):
        return result.to_message()
    if isinstance(result, Message):
        return result
    out: list[Message] = []
    for item in result:
        if isinstance(item, Event):
            out.append(item.to_message())
        elif isinstance(item, Message):
            out.append(item)
        else:
            raise EventValidationError(
                f"typed handler returned {type(item).__name__}, expected Event or Message"
            )
    return out
