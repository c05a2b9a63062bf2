"""``Idempotency-Key`` on ``POST /v1/events``: a key names one request.

Per (API key, Idempotency-Key) the store keeps the request's fingerprint (SHA-256 of
the route and the canonical JSON body: keys sorted, no whitespace) and, once it is
answered, its response (:mod:`eventmill.store.idempotency`). Before anything is
stored:

* another body under a used key → 409 ``idempotency_conflict`` (nothing stored or
  published);
* the same body once the first request was answered → that answer again, byte for
  byte, with ``Idempotent-Replayed: true``;
* the same body while the first is still running → wait for it (up to the request
  timeout), then its answer; still running → 409 ``idempotency_in_progress``.

The request's events are stored under dedup keys derived from the key's use (its
token), so a request that failed after storing (bus down: 503, nothing recorded) is
found again by its retry, which answers them as duplicates. 5xx answers are not
recorded (a retry runs again); 2xx and 4xx answers are. Keys are forgotten
``idempotency_ttl`` after their first use (24 h by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
from fastapi.responses import Response

from eventmill.errors import EventmillError
from eventmill.events import Event
from eventmill.ingest.context import IngestContext
from eventmill.store.errors import StoreError
from eventmill.store.idempotency import IdempotencyStore
from eventmill.web.errors import ApiError, api_error_for

__all__ = ["REPLAYED_HEADER", "cleanup_loop", "fingerprint", "run_idempotent"]

_log = logging.getLogger("eventmill.ingest")

REPLAYED_HEADER: Final = "Idempotent-Replayed"
"""Response header (``true``) on an answer replayed for an Idempotency-Key."""
CLEANUP_EVERY: Final = 600.0
"""Seconds between two deletions of expired keys (or the ttl, if shorter)."""
_JSON: Final = "application/json"


def fingerprint(route: str, body: Any) -> str:
    """SHA-256 (hex) of ``route`` and the canonical JSON of ``body``: equal for bodies
    that differ only in key order or whitespace."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(route.encode() + b"\n" + canonical).hexdigest()


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


async def run_idempotent(
    ctx: IngestContext,
    *,
    owner: str,
    key: str,
    route: str,
    body: Any,
    events: Sequence[Event],
    chosen_ids: Sequence[bool],
    run: Callable[[list[tuple[Event, str | None]]], Awaitable[bytes]],
) -> Response:
    """Answer one request under ``key`` of ``owner``: replay, conflict, or ``run`` it.

    ``run`` gets the events paired with their dedup keys, stores and publishes them,
    and returns the 200 body; an :class:`~eventmill.EventmillError` it raises is
    recorded as the answer when it is a 4xx, and leaves the key to a retry otherwise.
    An event whose id the caller chose (``chosen_ids``) is deduplicated by that id, as
    without a key (so it is never refused for an id stored under another key); the
    others by a key derived from this use of the Idempotency-Key and their position.
    """
    store = IdempotencyStore(ctx.resources.require_store())
    timeout = ctx.config.request_timeout
    ttl = ctx.config.idempotency_ttl
    lease = 2 * timeout + 1.0  # the owner's whole run fits in it
    digest = fingerprint(route, body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    while True:
        claim = await store.claim(owner, key, digest, lease=lease, ttl=ttl)
        if claim.outcome == "owner":
            break
        if claim.outcome == "conflict":
            raise ApiError(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was already used with a different request body "
                f"(keys are remembered for {_hours(ttl)}); use a new key for a new request",
            )
        if claim.outcome == "replay":
            assert claim.status is not None
            assert claim.response is not None
            return Response(
                claim.response,
                status_code=claim.status,
                media_type=_JSON,
                headers={REPLAYED_HEADER: "true"},
            )
        if loop.time() + delay > deadline:  # busy for too long
            raise ApiError(
                409,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed; retry it later",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)

    base = hashlib.sha256(f"{owner}\0{key}\0{claim.token}".encode()).hexdigest()[:32]
    pairs: list[tuple[Event, str | None]] = [
        (event, None if chosen else f"idem:{base}:{i}")
        for i, (event, chosen) in enumerate(zip(events, chosen_ids, strict=True))
    ]
    try:
        content = await run(pairs)
    except EventmillError as exc:
        error = api_error_for(exc)
        if error.status < 500:
            answer = error.response()
            await _complete(store, owner, key, claim.token, error.status, bytes(answer.body))
            return answer
        await _release(store, owner, key, claim.token)
        raise
    except BaseException:
        await _release(store, owner, key, claim.token)
        raise
    await _complete(store, owner, key, claim.token, 200, content)
    return Response(content, media_type=_JSON)


async def _complete(
    store: IdempotencyStore, owner: str, key: str, token: str, status: int, body: bytes
) -> None:
    try:
        await store.complete(owner, key, token, status, body)
    except StoreError as exc:
        # The events are stored: answer them. A retry finds them as duplicates once
        # the lease has run out.
        _log.warning("could not record the answer for an Idempotency-Key: %s", exc)


async def _release(store: IdempotencyStore, owner: str, key: str, token: str) -> None:
    with contextlib.suppress(StoreError):  # else the lease runs out by itself
        await store.release(owner, key, token)


async def cleanup_loop(ctx: IngestContext) -> None:
    """Delete expired keys now and then, until cancelled; errors are logged and retried."""
    interval = min(CLEANUP_EVERY, ctx.config.idempotency_ttl)
    while True:
        try:
            store = ctx.resources.store
            if store is not None:
                deleted = await IdempotencyStore(store).delete_expired()
                if deleted:
                    _log.debug("deleted %d expired idempotency keys", deleted)
        except StoreError as exc:
            _log.warning("could not delete expired idempotency keys: %s", exc)
        await asyncio.sleep(interval)
