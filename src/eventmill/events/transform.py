"""Transformers: a provider's webhook body -> :class:`Event`.

A transformer is a callable ``(WebhookInput) -> Event``; a receiver calls the one
configured for its source after the signature is verified and the body parsed.
Transformers are pure (no I/O) and raise :class:`~eventmill.EventValidationError`
when the body lacks what they need.

User mapping is configuration: an ordered list of dotted JSON paths, the first that
yields a non-empty string or integer wins (``notes.user_id``, ``data.object.metadata.user_id``;
a digit segment indexes a list). In Razorpay paths ``$entity`` names the event's main
entity (``payload.payment.entity`` for ``payment.captured``, ``payload.order.entity``
for ``order.paid``, ...).

A Razorpay event's payload is the body with its entities also flattened at the top:
``payload.payment.entity`` is copied to ``payment``, ``payload.order.entity`` to
``order``, and so on (:func:`flatten_razorpay_entities`), so every consumer (the store,
outbound deliveries, WebSocket and SSE clients) reads ``payload.payment.amount`` as in
the system description, and nothing of the body is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import pydantic

from eventmill.errors import ConfigurationError, EventValidationError
from eventmill.events.envelope import EVENT_NAME_RE, USER_ID_RE, Event, validation_error

__all__ = [
    "DEFAULT_RAZORPAY_USER_ID_PATHS",
    "GenericTransformer",
    "RazorpayTransformer",
    "Transformer",
    "WebhookInput",
    "flatten_razorpay_entities",
    "github_transformer",
    "resolve_path",
    "standard_webhooks_transformer",
    "stripe_transformer",
    "transformer_for",
]

DEFAULT_RAZORPAY_USER_ID_PATHS: Final = ("$entity.notes.user_id", "account_id", "account.id")
"""Default Razorpay user mapping: the main entity's ``notes.user_id``, then the account id
(``account.id`` covers the flat example shape)."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class WebhookInput:
    """What a receiver hands a transformer."""

    source: str
    """The configured source name (the ``{source}`` in ``/webhooks/{source}``)."""
    body: Any
    """The parsed JSON body."""
    external_id: str | None = None
    """The provider's delivery/event id (``X-Razorpay-Event-Id``, ``webhook-id``, ...)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers, names in lower case."""
    received_at: datetime = field(default_factory=_now)
    """When the request arrived (default: now, UTC)."""


Transformer = Callable[[WebhookInput], Event]
"""Converts a verified, parsed webhook into an Event (pure; raises EventValidationError)."""


def resolve_path(data: Any, path: str) -> Any:
    """Return the value at dotted ``path`` in ``data``, or ``None`` if any step is missing."""
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


def _as_user_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and USER_ID_RE.fullmatch(value) is not None:
        return value
    return None  # not a valid user id (empty, over 256 characters, control characters)


def _first_user_id(paths: tuple[str, ...], lookup: Callable[[str], Any]) -> str | None:
    for path in paths:
        user_id = _as_user_id(lookup(path))
        if user_id is not None:
            return user_id
    return None


def _check_paths(paths: tuple[str, ...]) -> None:
    for path in paths:
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ConfigurationError(f"invalid JSON path {path!r}: use dotted keys like 'a.b.c'")


def _build(
    inp: WebhookInput, name: str, user_id: str | None, created_at: datetime, origin: str
) -> Event:
    """The event; ``origin`` says where its name came from (``body field 'event'``), for
    the message when the name is not a valid event name."""
    if EVENT_NAME_RE.fullmatch(name) is None:
        raise EventValidationError(
            f"the {inp.source} event name made from {origin} is not a valid event name "
            "(letters, digits, '_', '.', ':', '-'; at most 200 characters)",
            field="event_name",
        )
    try:
        return Event.from_parts(
            event_name=name,
            source=inp.source,
            user_id=user_id,
            payload=inp.body,
            created_at=created_at,
        )
    except pydantic.ValidationError as exc:
        raise validation_error(exc, f"cannot build {inp.source} event") from exc


@dataclass(frozen=True, slots=True)
class RazorpayTransformer:
    """Razorpay webhook -> Event named ``razorpay.<event>`` (e.g. ``razorpay.payment.captured``).

    The payload is the webhook body with its entities also flattened at the top
    (:func:`flatten_razorpay_entities`: ``payment`` = ``payload.payment.entity``, ...);
    ``created_at`` is the body's ``created_at`` (Unix seconds) when present, else the
    receive time.
    """

    user_id_paths: tuple[str, ...] = DEFAULT_RAZORPAY_USER_ID_PATHS
    """JSON paths tried in order for the user id (default
    :data:`DEFAULT_RAZORPAY_USER_ID_PATHS`); no match leaves ``user_id`` empty."""
    prefix: str = "razorpay"
    """Prefix of the event name (default ``razorpay``)."""

    def __post_init__(self) -> None:
        _check_paths(tuple(p.removeprefix("$entity.") for p in self.user_id_paths))

    def __call__(self, inp: WebhookInput) -> Event:
        body = inp.body
        if not isinstance(body, Mapping):
            raise EventValidationError("razorpay webhook body must be a JSON object", field=None)
        name = body.get("event")
        if not isinstance(name, str) or not name:
            raise EventValidationError("razorpay webhook has no 'event' name", field="event")
        entity = _main_entity(body, name)

        def lookup(path: str) -> Any:
            if path == "$entity" or path.startswith("$entity."):
                return resolve_path(entity, path[8:]) if path != "$entity" else entity
            return resolve_path(body, path)

        user_id = _first_user_id(self.user_id_paths, lookup)
        created = body.get("created_at")
        created_at = inp.received_at
        if isinstance(created, int) and not isinstance(created, bool) and created > 0:
            try:
                created_at = datetime.fromtimestamp(created, UTC)
            except (OverflowError, OSError, ValueError):
                created_at = inp.received_at
        flat = WebhookInput(
            source=inp.source,
            body=flatten_razorpay_entities(body),
            external_id=inp.external_id,
            headers=inp.headers,
            received_at=inp.received_at,
        )
        return _build(flat, f"{self.prefix}.{name}", user_id, created_at, "body field 'event'")


def flatten_razorpay_entities(body: Mapping[str, Any]) -> dict[str, Any]:
    """A Razorpay body with each entity of its ``payload`` also at the top level.

    ``{"event": "payment.captured", "payload": {"payment": {"entity": {...}}}, ...}``
    becomes the same body plus ``"payment": {...}`` (the entity itself), the shape of
    the system description's converted event (``payload.payment.amount``). Every field
    of the body is kept as it is; a top-level key the body already has is never
    replaced (the flat example shape, which has ``payment`` at the top, stays as is).
    """
    flat = dict(body)
    wrappers = body.get("payload")
    if not isinstance(wrappers, Mapping):
        return flat
    for kind, wrapper in wrappers.items():
        if kind in flat or not isinstance(wrapper, Mapping):
            continue
        entity = wrapper.get("entity")
        if isinstance(entity, Mapping):
            flat[kind] = entity
    return flat


def _main_entity(body: Mapping[str, Any], name: str) -> Any:
    """Return the event's main entity dict (``payload.<kind>.entity``, or flat ``<kind>``)."""
    kind = name.split(".", 1)[0]
    payload = body.get("payload")
    if isinstance(payload, Mapping):
        candidates = [kind]
        contains = body.get("contains")
        if isinstance(contains, list):
            candidates += [c for c in contains if isinstance(c, str)]
        for candidate in candidates:
            wrapper = payload.get(candidate)
            if isinstance(wrapper, Mapping) and isinstance(wrapper.get("entity"), Mapping):
                return wrapper["entity"]
        return None
    flat = body.get(kind)
    return flat if isinstance(flat, Mapping) else None


@dataclass(frozen=True, slots=True)
class GenericTransformer:
    """Any JSON webhook -> Event named ``<source>.<name>``.

    The name is taken from the header ``event_name_header`` if set and present, else
    from the first of ``event_name_paths`` holding a string, else ``default_name``;
    ``action_path`` (GitHub's ``action``) appends ``.<action>`` when present.
    """

    event_name_header: str | None = None
    """Header holding the event name (lower case, e.g. ``x-github-event``; default none)."""
    event_name_paths: tuple[str, ...] = ("type", "event", "event_type")
    """Body paths tried for the event name (default ``type``, ``event``, ``event_type``)."""
    action_path: str | None = None
    """Body path whose string value is appended to the name (default none)."""
    user_id_paths: tuple[str, ...] = ()
    """Body paths tried in order for the user id (default none: no user)."""
    default_name: str = "webhook"
    """Name used when nothing else yields one (default ``webhook``)."""

    def __post_init__(self) -> None:
        _check_paths(self.event_name_paths)
        _check_paths(self.user_id_paths)
        if self.action_path is not None:
            _check_paths((self.action_path,))

    def __call__(self, inp: WebhookInput) -> Event:
        body = inp.body
        name: str | None = None
        origin = "its default name"
        if self.event_name_header is not None:
            name = inp.headers.get(self.event_name_header.lower()) or None
            origin = f"header {self.event_name_header}"
        if name is None:
            for path in self.event_name_paths:
                value = resolve_path(body, path)
                if isinstance(value, str) and value:
                    name, origin = value, f"body field {path!r}"
                    break
        if name is None:
            name, origin = self.default_name, "its default name"
        if self.action_path is not None:
            action = resolve_path(body, self.action_path)
            if isinstance(action, str) and action:
                name = f"{name}.{action}"
                origin = f"{origin} and body field {self.action_path!r}"
        user_id = _first_user_id(self.user_id_paths, lambda p: resolve_path(body, p))
        return _build(inp, f"{inp.source}.{name}", user_id, inp.received_at, origin)


def github_transformer(user_id_paths: tuple[str, ...] = ()) -> GenericTransformer:
    """GitHub: name from ``X-GitHub-Event`` plus ``.action`` (``github.pull_request.opened``)."""
    return GenericTransformer(
        event_name_header="x-github-event",
        event_name_paths=(),
        action_path="action",
        user_id_paths=user_id_paths,
    )


def stripe_transformer(
    user_id_paths: tuple[str, ...] = ("data.object.metadata.user_id",),
) -> GenericTransformer:
    """Stripe: name from ``type`` (``stripe.invoice.paid``); user from the object's metadata."""
    return GenericTransformer(event_name_paths=("type",), user_id_paths=user_id_paths)


def standard_webhooks_transformer(user_id_paths: tuple[str, ...] = ()) -> GenericTransformer:
    """Standard Webhooks: name from ``type``."""
    return GenericTransformer(event_name_paths=("type",), user_id_paths=user_id_paths)


def transformer_for(scheme: str, user_id_paths: tuple[str, ...] | None = None) -> Transformer:
    """Return the default transformer of a receiver scheme.

    ``scheme`` is ``razorpay``, ``github``, ``stripe``, ``standard`` (Standard
    Webhooks) or ``hmac`` (generic); ``user_id_paths`` overrides its user mapping.
    Raises :class:`~eventmill.ConfigurationError` for another scheme.
    """
    if scheme == "razorpay":
        if user_id_paths is None:
            return RazorpayTransformer()
        return RazorpayTransformer(user_id_paths=user_id_paths)
    if scheme == "github":
        return github_transformer(user_id_paths or ())
    if scheme == "stripe":
        if user_id_paths is None:
            return stripe_transformer()
        return stripe_transformer(user_id_paths)
    if scheme == "standard":
        return standard_webhooks_transformer(user_id_paths or ())
    if scheme == "hmac":
        return GenericTransformer(user_id_paths=user_id_paths or ())
    raise ConfigurationError(f"unknown webhook scheme {scheme!r}")
