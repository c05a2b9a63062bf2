"""A client of a running eventmill service, for services that reach it over HTTP rather
than through the broker: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio),
both on httpx and with the same methods.

    with eventmill.Client("http://127.0.0.1:8080", api_key) as client:
        result = client.publish("payment.processed", {"payment_id": "pay_1"}, user_id="u_1")
        for event in client.events(event_name="payment.*"):
            ...

**Retries.** A call is retried, with exponential backoff and jitter (:class:`RetryPolicy`,
bounded by its number of attempts), when the service answers 429, 502, 503 or 504 or the
connection fails. Only calls that are safe to repeat are retried after a request may have
reached the service: reads, updates, deletes and :meth:`Client.publish`, whose
``Idempotency-Key`` (generated per call unless given) is sent unchanged with every
attempt, so the service stores the events once however often the call is retried. Other
calls (creating an endpoint, rotating its secret, retrying a delivery) are retried only
when the connection could not be made at all. A ``Retry-After`` header is
honoured, up to :attr:`RetryPolicy.max_backoff`.

**Errors.** Every failure is a :class:`ClientError` (an :class:`~eventmill.EventmillError`)
carrying the HTTP status and the service's error body (``code``, ``message``,
``details``); a connection that could not be made or kept is a
:class:`ClientConnectionError` (``status`` is ``None``).

This module speaks HTTP only: it imports none of the service's layers.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventmill.errors import EventmillError
from eventmill.events import Event

__all__ = [
    "AsyncClient",
    "Client",
    "ClientConnectionError",
    "ClientError",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryPage",
    "Endpoint",
    "EndpointPage",
    "EndpointSecret",
    "EventPage",
    "EventRecord",
    "PublishResult",
    "PublishedEvent",
    "RetryPolicy",
]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
EventLike = Event | Mapping[str, Any]
"""An event to publish: an :class:`~eventmill.events.Event` or its JSON form as a dict."""

DEFAULT_TIMEOUT = 10.0
"""Seconds one HTTP request may take (connect, write, read), per attempt."""
_USER_AGENT = "eventmill-python-client"
_MAX_PAGE = 1000


# -- errors -----------------------------------------------------------------------------


class ClientError(EventmillError):
    """The service refused a call, or could not be reached.

    ``status`` is the HTTP status (``None`` when no answer came); ``code``, ``message``
    and ``details`` are the service's error body (``{"error", "message", "details"}``);
    ``details`` lists the invalid fields of a 422 as ``{"field", "message"}`` dicts.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        code: str,
        details: list[dict[str, Any]] | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method else ""
        prefix = f"{status} {code}" if status is not None else code
        super().__init__(f"{prefix}: {message}{where}")


class ClientConnectionError(ClientError):
    """No answer: the connection could not be made, or broke or timed out before the
    service answered (after the retries the policy allows)."""


# -- retries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call is retried. Retry ``n`` (0-based) waits
    ``min(initial_backoff * multiplier**n, max_backoff)`` times a random factor in
    ``[1 - jitter, 1]`` (or the answer's ``Retry-After``, capped at ``max_backoff``)."""

    attempts: int = 5
    """Most attempts of one call, the first included (1: never retry)."""
    initial_backoff: float = 0.1
    """Seconds before the first retry (before jitter)."""
    multiplier: float = 2.0
    """Growth of each next backoff (>= 1)."""
    max_backoff: float = 5.0
    """Cap of one backoff, also of a ``Retry-After`` the service sends."""
    jitter: float = 0.5
    """Fraction of each backoff drawn at random, in [0, 1] (spreads retrying clients)."""
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    """Answers that are retried (503: the store or bus is unavailable, nothing acknowledged)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy backoffs must be >= 0")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1]")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        base = min(self.initial_backoff * self.multiplier**retry, self.max_backoff)
        draw = (rng or random).random()
        return base * (1 - self.jitter * draw)


NO_RETRY = RetryPolicy(attempts=1)
"""A policy that never retries."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use the policy's own backoff


class _Attempts:
    """The retry decisions of one call (no I/O: both clients share it)."""

    def __init__(self, policy: RetryPolicy, idempotent: bool, rng: random.Random) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._rng = rng
        self.made = 0

    def _next(self, hint: float | None = None) -> float | None:
        self.made += 1
        if self.made >= self._policy.attempts:
            return None
        if hint is not None:
            return min(hint, self._policy.max_backoff)
        return self._policy.backoff(self.made - 1, self._rng)

    def after_answer(self, response: httpx.Response) -> float | None:
        """The delay before the next attempt, or ``None``: the answer is final."""
        if response.status_code not in self._policy.retry_statuses or not self._idempotent:
            self.made += 1
            return None
        return self._next(_retry_after(response))

    def after_failure(self, exc: httpx.TransportError) -> float | None:
        """The delay before the next attempt, or ``None``: give up with ``exc``."""
        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if not (unsent or self._idempotent):
            self.made += 1
            return None
        return self._next()


# -- models -----------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class PublishedEvent(_Model):
    """The outcome for one published event."""

    id: str
    duplicate: bool
    """Stored before (same Idempotency-Key or id): not published again."""


class PublishResult(_Model):
    """What :meth:`Client.publish` answers: the stored events' ids, in request order."""

    ids: list[str]
    events: list[PublishedEvent]


class EventRecord(Event):
    """An event as the service stored it, with its place in the store's order."""

    position: int
    """Monotonic per store: the order events were stored in."""
    stored_at: datetime
    published_at: datetime | None = None
    """When the bus accepted it (``None``: not yet; the outbox relay will publish it)."""


class EventPage(_Model):
    """One page of :meth:`Client.event_pages`; ``next_cursor`` resumes after it."""

    events: list[EventRecord]
    next_cursor: str | None = None
    has_more: bool = False


class Endpoint(_Model):
    """A user's webhook endpoint. ``secret`` is only present in the answer that created
    it (``whsec_…``, shown once; :meth:`Client.rotate_endpoint_secret` makes a new one)."""

    id: str
    url: str
    user_id: str | None = None
    """Whose events it receives (``None``: every user's, set by an admin key)."""
    event_types: list[str] = Field(default_factory=list)
    """Event names or patterns (``razorpay.payment.*``); empty: every event."""
    description: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    rate_limit: float | None = None
    """Most attempts per second (``None``: no limit)."""
    disabled: bool = False
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    previous_secret_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    secret: str | None = None


class EndpointPage(_Model):
    """One page of endpoints."""

    endpoints: list[Endpoint]
    next_cursor: str | None = None
    has_more: bool = False


class EndpointSecret(_Model):
    """An endpoint's new signing secret; the previous one signs beside it until
    ``previous_secret_expires_at``."""

    id: str
    secret: str
    previous_secret_expires_at: datetime | None = None


class DeliveryAttempt(_Model):
    """One attempt of a delivery: when, the answer's status, latency, outcome and error,
    and the first 1 KiB of the answer's body."""

    attempt: int
    started_at: datetime
    status_code: int | None = None
    latency_ms: float | None = None
    outcome: str = ""
    error: str | None = None
    response_body: str | None = None


class Delivery(_Model):
    """One event sent to one endpoint. ``history`` (its attempts, oldest first) is only
    filled by :meth:`Client.delivery`."""

    id: str
    event_id: str
    endpoint_id: str
    user_id: str | None = None
    event_name: str = ""
    status: Literal["pending", "succeeded", "failed"]
    attempts: int = 0
    """How many attempts were made."""
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    history: list[DeliveryAttempt] | None = None


class DeliveryPage(_Model):
    """One page of deliveries (newest first)."""

    deliveries: list[Delivery]
    next_cursor: str | None = None
    has_more: bool = False


class _Requeued(_Model):
    requeued: int


# -- requests (no I/O: both clients build the same ones) -----------------------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise _unexpected(response, f"the answer is not JSON ({exc.msg})") from None


def _unexpected(response: httpx.Response, why: str) -> ClientError:
    request = response.request
    return ClientError(
        why,
        status=response.status_code,
        code="unexpected_response",
        method=request.method,
        url=str(request.url),
    )


def _parser(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            return model.model_validate(_json(response))
        except ValidationError as exc:
            raise _unexpected(response, f"the answer is not a {model.__name__}: {exc}") from None

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _error_for(response: httpx.Response) -> ClientError:
    """The :class:`ClientError` for an answer that is not 2xx."""
    request = response.request
    code, message, details = f"http_{response.status_code}", response.reason_phrase, None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        message = str(body.get("message") or message)
        raw = body.get("details")
        if isinstance(raw, list):
            details = [d for d in raw if isinstance(d, dict)]
    return ClientError(
        message or "error",
        status=response.status_code,
        code=code,
        details=details,
        method=request.method,
        url=str(request.url),
    )


def _time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _params(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = _time(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def _event_json(event: EventLike) -> dict[str, Any]:
    if isinstance(event, Event):
        return event.to_dict()
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"an event must be an Event or a mapping, not {type(event).__name__}")


def _body(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)
    except TypeError as exc:
        raise TypeError(f"not JSON-serializable: {exc}") from None


_JSON = {"Content-Type": "application/json"}


def _publish_call(
    event: str | EventLike | Sequence[EventLike],
    payload: Any,
    *,
    user_id: str | None,
    source: str | None,
    metadata: Mapping[str, Any] | None,
    event_id: str | None,
    idempotency_key: str | None,
) -> _Call[PublishResult]:
    if isinstance(event, str):
        item: dict[str, Any] = {"event_name": event, "payload": {} if payload is None else payload}
        extra = {"user_id": user_id, "source": source, "metadata": metadata, "id": event_id}
        item.update({k: v for k, v in extra.items() if v is not None})
        if isinstance(item["payload"], BaseModel):
            item["payload"] = item["payload"].model_dump(mode="json")
        body: Any = item
    else:
        if any(v is not None for v in (payload, user_id, source, metadata, event_id)):
            raise TypeError(
                "payload, user_id, source, metadata and event_id go with an event name; "
                "an Event or dict carries its own"
            )
        if isinstance(event, Event | Mapping):
            body = _event_json(event)
        else:
            body = [_event_json(e) for e in event]
            if not body:
                raise ValueError("publish needs at least one event")
    key = idempotency_key or uuid.uuid4().hex
    return _Call(
        "POST",
        "/v1/events",
        _parser(PublishResult),
        body=_body(body),
        headers={**_JSON, "Idempotency-Key": key},
        idempotent=True,  # the key makes every attempt the same request
    )


def _check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= _MAX_PAGE:
        raise ValueError(f"page_size must be 1-{_MAX_PAGE}")
    return page_size


def _event_page_call(
    filters: Mapping[str, Any], cursor: str | None, limit: int
) -> _Call[EventPage]:
    return _Call(
        "GET",
        "/v1/events",
        _parser(EventPage),
        params=_params(**filters, cursor=cursor, limit=limit),
    )


def _endpoint_fields(**values: Any) -> dict[str, Any]:
    return {k: (list(v) if k == "event_types" else v) for k, v in values.items() if v is not None}


def _rotate_call(endpoint_id: str, overlap_seconds: float | None) -> _Call[EndpointSecret]:
    body = {} if overlap_seconds is None else {"overlap_seconds": overlap_seconds}
    return _Call(
        "POST",
        f"/v1/endpoints/{_path_id(endpoint_id)}/rotate-secret",
        _parser(EndpointSecret),
        body=_body(body),
        headers=_JSON,
        idempotent=False,  # twice would replace the first new secret
    )


def _recover_call(endpoint_id: str, since: datetime, until: datetime | None) -> _Call[int]:
    body = {"since": _time(since)} | ({} if until is None else {"until": _time(until)})
    parse = _parser(_Requeued)
    return _Call(
        "POST",
        f"/v1/endpoints/{_path_id(endpoint_id)}/recover",
        lambda response: parse(response).requeued,
        body=_body(body),
        headers=_JSON,
    )


def _path_id(value: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"not an id: {value!r}")
    return value


class _Base:
    """What both clients hold: the URL, the credentials, the retry policy."""

    def __init__(self, url: str, api_key: str | None, retry: RetryPolicy | None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        """The service's base URL."""
        self.retry = retry or RetryPolicy()
        """How calls are retried."""
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._rng = random.Random()

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.url!r})"

    def _request_args(self, call: _Call[Any]) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params,
            "content": call.body,
            "headers": {**self._headers, **call.headers},
        }

    def _give_up(self, call: _Call[Any], exc: httpx.TransportError, attempts: int) -> ClientError:
        kind = type(exc).__name__
        return ClientConnectionError(
            f"no answer after {attempts} attempt(s): {kind}: {exc}",
            status=None,
            code="connection_failed",
            method=call.method,
            url=self.url + call.path,
        )


# -- the blocking client -------------------------------------------------------------------


class Client(_Base):
    """A blocking client of ``eventmill serve`` at ``url`` (``http://host:8080``).

    ``api_key`` (``em_…``, or an end user's JWT where a route accepts one) is sent as
    ``Authorization: Bearer``. ``http`` lets you bring your own :class:`httpx.Client`
    (proxies, TLS, event hooks); it is not closed by :meth:`close`. Use the client as a
    context manager, or call :meth:`close`. Thread-safe as httpx's client is.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, api_key, retry)
        self._own = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the connections (unless the httpx client was given)."""
        if self._own:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call[T]) -> T:
        attempts = _Attempts(self.retry, call.idempotent, self._rng)
        while True:
            try:
                response = self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:
                delay = attempts.after_failure(exc)
                if delay is None:
                    raise self._give_up(call, exc, attempts.made) from exc
            else:
                if response.is_success:
                    return call.parse(response)
                delay = attempts.after_answer(response)
                if delay is None:
                    raise _error_for(response)
            time.sleep(delay)

    # -- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the process is up (``{"status": "ok", "version": …}``)."""
        result: dict[str, Any] = self._send(_Call("GET", "/healthz", _json))
        return result

    def ready(self) -> bool:
        """``GET /readyz`` once, without retries: whether the store and bus are reachable."""
        try:
            response = self._http.request(**self._request_args(_Call("GET", "/readyz", _json)))
        except httpx.TransportError:
            return False
        return response.status_code == 200

    # -- events ---------------------------------------------------------------------------

    def publish(
        self,
        event: str | EventLike | Sequence[EventLike],
        payload: Any = None,
        *,
        user_id: str | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """``POST /v1/events``: publish one event or a batch (up to 500), stored then
        published to topic ``events``. Needs scope ``publish``.

        ``event`` is an event name (then ``payload``, ``user_id``, ``source``,
        ``metadata`` and ``event_id`` describe it), an :class:`~eventmill.events.Event`
        or its JSON form as a dict, or a sequence of those (a batch). The
        ``Idempotency-Key`` (a new random one unless given) is the same on every retry,
        so a retried call stores the events once (``duplicate: true`` on the repeat).
        """
        call = _publish_call(
            event,
            payload,
            user_id=user_id,
            source=source,
            metadata=metadata,
            event_id=event_id,
            idempotency_key=idempotency_key,
        )
        return self._send(call)

    def event(self, event_id: str) -> EventRecord:
        """``GET /v1/events/{id}`` (scope ``read``); a missing id raises ClientError 404."""
        return self._send(_Call("GET", f"/v1/events/{_path_id(event_id)}", _parser(EventRecord)))

    def event_pages(
        self,
        *,
        user_id: str | None = None,
        event_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
        page_size: int = 100,
        cursor: str | None = None,
    ) -> Iterator[EventPage]:
        """``GET /v1/events`` page by page (scope ``read``), each fetched when the
        previous one is consumed. Filters: ``user_id``, ``event_name`` (``*`` wildcards),
        ``source``, ``since <= created_at < until``. ``cursor`` resumes after a page's
        ``next_cursor``."""
        filters = {
            "user_id": user_id,
            "event_name": event_name,
            "source": source,
            "since": since,
            "until": until,
            "order": order,
        }
        size = _check_page_size(page_size)
        while True:
            page = self._send(_event_page_call(filters, cursor, size))
            yield page
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    def events(
        self,
        *,
        user_id: str | None = None,
        event_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[EventRecord]:
        """The stored events matching the filters (see :meth:`event_pages`), one by one,
        fetching a page only when needed; at most ``limit`` of them if given."""
        count = 0
        pages = self.event_pages(
            user_id=user_id,
            event_name=event_name,
            source=source,
            since=since,
            until=until,
            order=order,
            page_size=page_size if limit is None else min(page_size, max(limit, 1)),
        )
        for page in pages:
            for record in page.events:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield record

    # -- endpoints (the delivery API) ------------------------------------------------------

    def create_endpoint(
        self,
        url: str,
        *,
        user_id: str | None = None,
        event_types: Sequence[str] = (),
        description: str | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        disabled: bool | None = None,
    ) -> Endpoint:
        """``POST /v1/endpoints``: a new endpoint; its ``secret`` is in the answer only."""
        body = _endpoint_fields(
            url=url,
            user_id=user_id,
            event_types=event_types,
            description=description,
            headers=headers,
            rate_limit=rate_limit,
            disabled=disabled,
        )
        call = _Call(
            "POST",
            "/v1/endpoints",
            _parser(Endpoint),
            body=_body(body),
            headers=_JSON,
            idempotent=False,
        )
        return self._send(call)

    def endpoint(self, endpoint_id: str) -> Endpoint:
        """``GET /v1/endpoints/{id}``."""
        return self._send(_Call("GET", f"/v1/endpoints/{_path_id(endpoint_id)}", _parser(Endpoint)))

    def endpoints(
        self, *, user_id: str | None = None, disabled: bool | None = None, page_size: int = 100
    ) -> Iterator[Endpoint]:
        """``GET /v1/endpoints``, every page in turn (an end user's JWT sees their own)."""
        cursor: str | None = None
        size = _check_page_size(page_size)
        while True:
            params = _params(user_id=user_id, disabled=disabled, cursor=cursor, limit=size)
            page = self._send(_Call("GET", "/v1/endpoints", _parser(EndpointPage), params=params))
            yield from page.endpoints
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    def update_endpoint(self, endpoint_id: str, **fields: Any) -> Endpoint:
        """``PATCH /v1/endpoints/{id}`` with the given fields (``disabled=False``
        re-enables an endpoint)."""
        call = _Call(
            "PATCH",
            f"/v1/endpoints/{_path_id(endpoint_id)}",
            _parser(Endpoint),
            body=_body(_endpoint_fields(**fields)),
            headers=_JSON,
        )
        return self._send(call)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """``DELETE /v1/endpoints/{id}``."""
        self._send(_Call("DELETE", f"/v1/endpoints/{_path_id(endpoint_id)}", _nothing))

    def rotate_endpoint_secret(
        self, endpoint_id: str, *, overlap_seconds: float | None = None
    ) -> EndpointSecret:
        """``POST /v1/endpoints/{id}/rotate-secret``: a new secret; the current one keeps
        signing beside it for ``overlap_seconds`` (default: the service's setting)."""
        return self._send(_rotate_call(endpoint_id, overlap_seconds))

    def recover_endpoint(
        self, endpoint_id: str, since: datetime, until: datetime | None = None
    ) -> int:
        """``POST /v1/endpoints/{id}/recover``: every failed delivery created since
        ``since`` (and before ``until``) is due again; answers how many."""
        return self._send(_recover_call(endpoint_id, since, until))

    # -- deliveries ---------------------------------------------------------------------------

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        status: Literal["pending", "succeeded", "failed"] | None = None,
        page_size: int = 100,
    ) -> Iterator[Delivery]:
        """``GET /v1/deliveries`` with filters, newest first, every page in turn."""
        cursor: str | None = None
        size = _check_page_size(page_size)
        while True:
            params = _params(
                endpoint_id=endpoint_id,
                event_id=event_id,
                user_id=user_id,
                status=status,
                cursor=cursor,
                limit=size,
            )
            page = self._send(_Call("GET", "/v1/deliveries", _parser(DeliveryPage), params=params))
            yield from page.deliveries
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delivery(self, delivery_id: str) -> Delivery:
        """``GET /v1/deliveries/{id}``, with its attempts in ``history``."""
        path = f"/v1/deliveries/{_path_id(delivery_id)}"
        return self._send(_Call("GET", path, _parser(Delivery)))

    def retry_delivery(self, delivery_id: str) -> Delivery:
        """``POST /v1/deliveries/{id}/retry``: due again now, with a new round of the
        schedule (also after a success: the receiver gets it again, same webhook-id)."""
        path = f"/v1/deliveries/{_path_id(delivery_id)}/retry"
        return self._send(_Call("POST", path, _parser(Delivery), idempotent=False))


# -- the asyncio client ------------------------------------------------------------------------


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited (``events`` and
    the other listings are async iterators). ``http`` may be your own
    :class:`httpx.AsyncClient` (not closed by :meth:`aclose`)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, api_key, retry)
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close the connections (unless the httpx client was given)."""
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempts = _Attempts(self.retry, call.idempotent, self._rng)
        while True:
            try:
                response = await self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:
                delay = attempts.after_failure(exc)
                if delay is None:
                    raise self._give_up(call, exc, attempts.made) from exc
            else:
                if response.is_success:
                    return call.parse(response)
                delay = attempts.after_answer(response)
                if delay is None:
                    raise _error_for(response)
            await asyncio.sleep(delay)

    # -- health ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        result: dict[str, Any] = await self._send(_Call("GET", "/healthz", _json))
        return result

    async def ready(self) -> bool:
        """``GET /readyz`` once, without retries."""
        try:
            args = self._request_args(_Call("GET", "/readyz", _json))
            response = await self._http.request(**args)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    # -- events ---------------------------------------------------------------------------

    async def publish(
        self,
        event: str | EventLike | Sequence[EventLike],
        payload: Any = None,
        *,
        user_id: str | None = None,
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        """See :meth:`Client.publish`."""
        call = _publish_call(
            event,
            payload,
            user_id=user_id,
            source=source,
            metadata=metadata,
            event_id=event_id,
            idempotency_key=idempotency_key,
        )
        return await self._send(call)

    async def event(self, event_id: str) -> EventRecord:
        """See :meth:`Client.event`."""
        path = f"/v1/events/{_path_id(event_id)}"
        return await self._send(_Call("GET", path, _parser(EventRecord)))

    async def event_pages(
        self,
        *,
        user_id: str | None = None,
        event_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
        page_size: int = 100,
        cursor: str | None = None,
    ) -> AsyncIterator[EventPage]:
        """See :meth:`Client.event_pages`."""
        filters = {
            "user_id": user_id,
            "event_name": event_name,
            "source": source,
            "since": since,
            "until": until,
            "order": order,
        }
        size = _check_page_size(page_size)
        while True:
            page = await self._send(_event_page_call(filters, cursor, size))
            yield page
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def events(
        self,
        *,
        user_id: str | None = None,
        event_name: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "asc",
        page_size: int = 100,
        limit: int | None = None,
    ) -> AsyncIterator[EventRecord]:
        """See :meth:`Client.events`."""
        count = 0
        pages = self.event_pages(
            user_id=user_id,
            event_name=event_name,
            source=source,
            since=since,
            until=until,
            order=order,
            page_size=page_size if limit is None else min(page_size, max(limit, 1)),
        )
        async for page in pages:
            for record in page.events:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield record

    # -- endpoints ------------------------------------------------------------------------

    async def create_endpoint(
        self,
        url: str,
        *,
        user_id: str | None = None,
        event_types: Sequence[str] = (),
        description: str | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limit: float | None = None,
        disabled: bool | None = None,
    ) -> Endpoint:
        """See :meth:`Client.create_endpoint`."""
        body = _endpoint_fields(
            url=url,
            user_id=user_id,
            event_types=event_types,
            description=description,
            headers=headers,
            rate_limit=rate_limit,
            disabled=disabled,
        )
        call = _Call(
            "POST",
            "/v1/endpoints",
            _parser(Endpoint),
            body=_body(body),
            headers=_JSON,
            idempotent=False,
        )
        return await self._send(call)

    async def endpoint(self, endpoint_id: str) -> Endpoint:
        """See :meth:`Client.endpoint`."""
        path = f"/v1/endpoints/{_path_id(endpoint_id)}"
        return await self._send(_Call("GET", path, _parser(Endpoint)))

    async def endpoints(
        self, *, user_id: str | None = None, disabled: bool | None = None, page_size: int = 100
    ) -> AsyncIterator[Endpoint]:
        """See :meth:`Client.endpoints`."""
        cursor: str | None = None
        size = _check_page_size(page_size)
        while True:
            params = _params(user_id=user_id, disabled=disabled, cursor=cursor, limit=size)
            page = await self._send(
                _Call("GET", "/v1/endpoints", _parser(EndpointPage), params=params)
            )
            for item in page.endpoints:
                yield item
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def update_endpoint(self, endpoint_id: str, **fields: Any) -> Endpoint:
        """See :meth:`Client.update_endpoint`."""
        call = _Call(
            "PATCH",
            f"/v1/endpoints/{_path_id(endpoint_id)}",
            _parser(Endpoint),
            body=_body(_endpoint_fields(**fields)),
            headers=_JSON,
        )
        return await self._send(call)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """See :meth:`Client.delete_endpoint`."""
        await self._send(_Call("DELETE", f"/v1/endpoints/{_path_id(endpoint_id)}", _nothing))

    async def rotate_endpoint_secret(
        self, endpoint_id: str, *, overlap_seconds: float | None = None
    ) -> EndpointSecret:
        """See :meth:`Client.rotate_endpoint_secret`."""
        return await self._send(_rotate_call(endpoint_id, overlap_seconds))

    async def recover_endpoint(
        self, endpoint_id: str, since: datetime, until: datetime | None = None
    ) -> int:
        """See :meth:`Client.recover_endpoint`."""
        return await self._send(_recover_call(endpoint_id, since, until))

    # -- deliveries -------------------------------------------------------------------------

    async def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        user_id: str | None = None,
        status: Literal["pending", "succeeded", "failed"] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Delivery]:
        """See :meth:`Client.deliveries`."""
        cursor: str | None = None
        size = _check_page_size(page_size)
        while True:
            params = _params(
                endpoint_id=endpoint_id,
                event_id=event_id,
                user_id=user_id,
                status=status,
                cursor=cursor,
                limit=size,
            )
            page = await self._send(
                _Call("GET", "/v1/deliveries", _parser(DeliveryPage), params=params)
            )
            for item in page.deliveries:
                yield item
            if not page.has_more or page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def delivery(self, delivery_id: str) -> Delivery:
        """See :meth:`Client.delivery`."""
        path = f"/v1/deliveries/{_path_id(delivery_id)}"
        return await self._send(_Call("GET", path, _parser(Delivery)))

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        """See :meth:`Client.retry_delivery`."""
        path = f"/v1/deliveries/{_path_id(delivery_id)}/retry"
        return await self._send(_Call("POST", path, _parser(Delivery), idempotent=False))
