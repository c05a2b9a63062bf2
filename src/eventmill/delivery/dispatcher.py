"""The dispatcher: claims due deliveries, sends them, records what happened.

Work flows through three bounded stages:

* the **claimer** leases due deliveries from the store (oldest due first), never more
  than the room left under ``max_in_flight``, and skipping endpoints whose lane is
  full, so one slow endpoint's backlog never crowds out the others;
* one **lane** per endpoint holds its deliveries: at most ``concurrency_per_endpoint``
  attempts in flight and, if the endpoint has a ``rate_limit``, that many per second
  (aiolimiter's leaky bucket); a lane holds what its endpoint answers well within a
  lease (one round of its concurrency for a hanging one, up to ten for a fast one), and
  a hanging endpoint fills only its own lane. The lane owns the endpoint's keep-alive
  connections (:mod:`eventmill.delivery.http`). A claim gives each endpoint at most
  the room its lane has; when a lane that may have more waiting in the store drains
  to half, it wakes the claimer (so one busy endpoint is fed as fast as it answers);
* the **recorder** writes outcomes in batches (one transaction for many attempts).

An attempt starts only while its lease has at least ``timeout_seconds`` + 2 s left
(else it is released for another round), and is cut off at ``timeout_seconds``:
so no other dispatcher can claim a delivery while an attempt of it is in flight, and
no attempt is sent twice. A dispatcher killed mid-attempt leaves the delivery to be
claimed again when its lease ends: the receiver may see it twice, with the same
``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import random
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import httpcore
import orjson
from aiolimiter import AsyncLimiter

from eventmill.delivery.builders import BuilderError, PayloadBuilders
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.http import Connections, Target, default_ssl_context
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.network import (
    AddressPolicy,
    DestinationRefusedError,
    GuardedBackend,
    Resolver,
)
from eventmill.delivery.signing import sign
from eventmill.delivery.store import Claimed, DeliveryStore, EndpointRecord, Outcome, Status
from eventmill.errors import EventmillError
from eventmill.events import Event
from eventmill.message import Message
from eventmill.pubsub.base import Publisher
from eventmill.web.tracing import TraceContext

__all__ = ["DEAD_LETTER_TOPIC", "Dispatcher", "Job"]

_log = logging.getLogger("eventmill.delivery")

DEAD_LETTER_TOPIC: Final = "deliveries.dead"
"""Where failed deliveries are published (their JSON, see :func:`dead_letter`)."""

_LEASE_MARGIN: Final = 2.0
"""An attempt starts only while its lease has ``timeout_seconds`` + this left."""
_BODY_CACHE: Final = 1024
_RECORD_BATCH: Final = 500
_RECORD_LINGER: Final = 0.01
"""Seconds the recorder waits after an outcome for more, so they share a transaction."""
_QUEUE_MAX: Final = 10
"""A fast endpoint's lane holds up to this many times its concurrency (see ``_Lane``)."""
_SWEEP_SECONDS: Final = 15.0


def _trace_hop(envelope: bytes) -> TraceContext | None:
    """This attempt's hop in the trace the event belongs to (its ``metadata.trace_id``,
    set at ingest from the request's ``traceparent``), sent as ``traceparent``."""
    if b'"trace_id"' not in envelope:
        return None
    try:
        metadata = orjson.loads(envelope).get("metadata") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    trace_id = metadata.get("trace_id") if isinstance(metadata, dict) else None
    return TraceContext.from_trace_id(trace_id) if isinstance(trace_id, str) else None


@dataclass(slots=True)
class Job:
    """A leased delivery waiting in its endpoint's lane."""

    claimed: Claimed
    lease_deadline: float
    """``time.monotonic()`` at which the lease ends."""
    body: bytes | None


class _Lane:
    """One endpoint's deliveries: a bounded queue, a concurrency cap, a rate limit, its
    connections."""

    __slots__ = (
        "active",
        "backlog",
        "budget",
        "concurrency",
        "endpoint",
        "http",
        "idle_since",
        "keys",
        "keys_until",
        "latency",
        "limiter",
        "queue",
        "rate",
        "rate_capacity",
        "reserved",
        "target",
        "target_error",
    )

    def __init__(
        self,
        endpoint: EndpointRecord,
        concurrency: int,
        http: Connections,
        budget: float,
        latency: float,
    ) -> None:
        self.queue: deque[Job] = deque()
        self.active = 0
        self.reserved = 0
        self.backlog = False
        """Whether the store may hold due deliveries of this endpoint it did not get."""
        self.concurrency = concurrency
        self.endpoint = endpoint
        self.http = http
        self.target: Target | None = None
        self.target_error: str | None = None
        self.rate: float | None = None
        self.rate_capacity: int | None = None
        self.limiter: AsyncLimiter | None = None
        self.budget = budget
        """Seconds a delivery may wait in the queue (its lease must outlast it)."""
        self.latency = latency
        """Seconds an attempt takes, smoothed (a new lane assumes the timeout)."""
        self.idle_since = time.monotonic()
        self.keys: list[bytes] | None = None
        self.keys_until = 0.0
        self.refresh(endpoint)

    def refresh(self, endpoint: EndpointRecord) -> None:
        old = self.endpoint
        self.endpoint = endpoint
        if endpoint is not old:
            self.keys = None
        if self.target is None or old.url != endpoint.url or old.headers != endpoint.headers:
            try:
                self.target, self.target_error = Target.parse(endpoint.url, endpoint.headers), None
            except ValueError as exc:
                self.target, self.target_error = None, str(exc)
        if endpoint.rate_limit != self.rate:
            self.rate = endpoint.rate_limit
            if self.rate is None:
                self.limiter = None
                self.rate_capacity = None
            else:
                if self.rate >= 1:
                    self.limiter = AsyncLimiter(self.rate, 1.0)
                else:
                    self.limiter = AsyncLimiter(1, 1.0 / self.rate)
                # what the bucket lets through in ~10 s, so leases never run out waiting
                self.rate_capacity = max(1, min(2 * self.concurrency, int(self.rate * 10)))

    @property
    def capacity(self) -> int:
        """Deliveries the lane holds: as many rounds of its concurrency as empty well
        within a lease at its answer time, from one (a slow or hanging endpoint holds
        just what it sends, so many of them take little of ``max_in_flight``) up to
        :data:`_QUEUE_MAX` (a fast, busy endpoint is claimed for in big batches); a
        rate-limited one, what its rate lets through in about 10 s."""
        if self.rate_capacity is not None:
            return self.rate_capacity
        rounds = int(self.budget / max(self.latency, 0.001))
        return self.concurrency * max(1, min(_QUEUE_MAX, rounds))

    def signing_keys(self) -> list[bytes]:
        """The endpoint's HMAC keys, decoded once (again when the previous secret's
        overlap ends, or the endpoint is refreshed)."""
        if self.keys is None or time.time() >= self.keys_until:
            endpoint = self.endpoint
            self.keys = endpoint.signing_keys(datetime.now(UTC))
            expires = endpoint.previous_secret_expires_at
            self.keys_until = expires.timestamp() if len(self.keys) > 1 and expires else math.inf
        return self.keys

    def answered(self, seconds: float) -> None:
        """Note how long an attempt took."""
        self.latency += 0.2 * (seconds - self.latency)

    @property
    def load(self) -> int:
        return self.active + len(self.queue) + self.reserved

    @property
    def free(self) -> int:
        return self.capacity - self.load


class _BodyCache:
    """Built bodies by (event id, builder), so fifty endpoints build an event once."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: str, value: bytes) -> None:
        self._items[key] = value
        if len(self._items) > _BODY_CACHE:
            self._items.popitem(last=False)


_HTTP_ERRORS: Final = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)
"""What a failed connection or exchange raises (timeouts apart)."""


def _retry_after(value: str, now: datetime) -> float | None:
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def dead_letter(delivery_id: str, record: dict[str, object]) -> Message:
    """The message published to :data:`DEAD_LETTER_TOPIC` for a failed delivery."""
    body = orjson.dumps(record, option=orjson.OPT_UTC_Z)
    metadata = {"delivery_id": delivery_id}
    user_id = record.get("user_id")
    if isinstance(user_id, str):
        metadata["partition_key"] = user_id
    return Message(body, metadata, id=f"{delivery_id}:{record.get('attempts', 0)}")


class Dispatcher:
    """Sends due deliveries (see the module docstring). ``start()`` / ``close()``."""

    def __init__(
        self,
        store: DeliveryStore,
        settings: DeliverySettings,
        builders: PayloadBuilders,
        metrics: DeliveryMetrics,
        bus: Callable[[], Publisher],
        *,
        topic: str = "events",
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.builders = builders
        self.metrics = metrics
        self._bus = bus
        self._topic = topic
        self._policy = AddressPolicy(settings.allow_networks)
        self._lanes: dict[str, _Lane] = {}
        self._load = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._sweep = asyncio.Event()
        self._outcomes: asyncio.Queue[tuple[Outcome, Job | None]] = asyncio.Queue(
            maxsize=2 * settings.max_in_flight
        )
        self._bodies = _BodyCache()
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._release: list[Claimed] = []
        self._stopping = False
        self._backend = GuardedBackend(self._policy, resolver)
        self._ssl = ssl_context
        self._user_agent = settings.user_agent.encode()
        self.problems: dict[str, str] = {}
        metrics.track_in_flight(lambda: self._load)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the claimer, the recorder and the sweeper."""
        if self._ssl is None:
            self._ssl = default_ssl_context()
        for work in (self._claimer(), self._recorder(), self._sweeper()):
            self._workers.append(asyncio.create_task(work))

    async def close(self, grace: float | None = None) -> None:
        """Stop claiming; let attempts in flight finish (up to ``grace``, default the
        timeout), give queued deliveries back, write every outcome, close the client."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        claimer = self._workers[0] if self._workers else None
        if claimer is not None:
            claimer.cancel()
            await asyncio.gather(claimer, return_exceptions=True)
        queued: list[Claimed] = []
        for lane in self._lanes.values():
            queued.extend(job.claimed for job in lane.queue)
            lane.queue.clear()
        if self._tasks:
            wait = self.settings.timeout_seconds + 1 if grace is None else grace
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        queued.extend(self._release)
        self._release.clear()
        with contextlib.suppress(EventmillError):
            await self.store.release(queued)
        await self._outcomes.join()
        for task in self._workers[1:]:
            task.cancel()
        await asyncio.gather(*self._workers[1:], return_exceptions=True)
        for lane in self._lanes.values():
            await lane.http.close_idle()

    def wake(self) -> None:
        """Look for due deliveries now (the fan-out recorded some)."""
        self._wake.set()

    # -- capacity, for the fan-out's direct hand-over -----------------------------------

    def reserve(self, endpoint: EndpointRecord, wanted: int) -> int:
        """Reserve room for up to ``wanted`` new deliveries to ``endpoint``; return how
        many were reserved (hand them over with :meth:`hand_over`, or :meth:`unreserve`)."""
        if self._stopping or endpoint.disabled:
            return 0
        room = self.settings.max_in_flight - self._load
        lane = self._lane(endpoint)
        n = max(0, min(wanted, lane.free, room))
        lane.reserved += n
        self._load += n
        if n < wanted:
            lane.backlog = True
        return n

    def unreserve(self, endpoint_id: str, n: int) -> None:
        """Give back reserved room that was not used."""
        lane = self._lanes.get(endpoint_id)
        if lane is not None and n:
            lane.reserved -= n
            self._load -= n
            self._on_room()

    def hand_over(self, endpoint_id: str, jobs: Sequence[Job], reserved: int) -> None:
        """Queue deliveries the fan-out inserted already leased (``reserved`` were reserved)."""
        lane = self._lanes.get(endpoint_id)
        if lane is None:  # pragma: no cover - lanes with reservations are never retired
            return
        lane.reserved -= reserved
        self._load -= reserved
        for job in jobs:
            lane.queue.append(job)
            self._load += 1
        self._pump(lane)
        self._on_room()

    # -- claiming -----------------------------------------------------------------------

    def _lane(self, endpoint: EndpointRecord) -> _Lane:
        lane = self._lanes.get(endpoint.id)
        if lane is None:
            s = self.settings
            assert self._ssl is not None, "start() first"
            http = Connections(
                self._backend,
                self._ssl,
                connect_timeout=min(s.connect_timeout_seconds, s.timeout_seconds),
            )
            budget = (s.lease_seconds - s.timeout_seconds - _LEASE_MARGIN) / 2
            lane = self._lanes[endpoint.id] = _Lane(
                endpoint, s.concurrency_per_endpoint, http, budget, s.timeout_seconds
            )
        else:
            lane.refresh(endpoint)
        return lane

    def _on_room(self) -> None:
        if self._load < self.settings.max_in_flight:
            self._room.set()

    async def _claimer(self) -> None:
        s = self.settings
        delay = 0.0
        while not self._stopping:
            if delay:
                await self._nap(delay)
                delay = 0.0
            room = s.max_in_flight - self._load
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if self._release:
                released, self._release = self._release, []
                try:
                    await self.store.release(released)
                except EventmillError as exc:
                    _log.warning("could not release %d deliveries: %s", len(released), exc)
            full = []
            for endpoint_id, lane in self._lanes.items():
                if lane.free <= 0:
                    full.append(endpoint_id)
                    lane.backlog = True  # it may have due deliveries it is not given
            self._wake.clear()
            asked: dict[str, tuple[_Lane, int]] = {}

            def room_for(
                endpoint: EndpointRecord, asked: dict[str, tuple[_Lane, int]] = asked
            ) -> int:
                lane = self._lane(endpoint)
                n = max(0, min(lane.free, s.max_in_flight - self._load))
                lane.reserved += n  # held while the claim runs (the fan-out hands over too)
                self._load += n
                asked[endpoint.id] = (lane, n)
                return n

            # the lease starts before the claim's statement: count from here, not after
            deadline = time.monotonic() + s.lease_seconds
            try:
                claim = await self.store.claim(
                    min(s.claim_batch, room),
                    lease_seconds=s.lease_seconds,
                    exclude=full,
                    room=room_for,
                )
            except EventmillError as exc:
                self.problems["dispatcher"] = f"cannot claim deliveries: {exc}"
                _log.warning("cannot claim deliveries: %s", exc)
                delay = min(s.poll_interval_seconds * 5, 5.0)
                continue
            finally:
                for lane, n in asked.values():
                    lane.reserved -= n
                    self._load -= n
            self.problems.pop("dispatcher", None)
            taken: dict[str, int] = {}
            for claimed in claim.deliveries:
                taken[claimed.endpoint_id] = taken.get(claimed.endpoint_id, 0) + 1
                endpoint = claim.endpoints[claimed.endpoint_id]
                lane = self._lane(endpoint)
                lane.queue.append(Job(claimed, deadline, claim.bodies.get(claimed.event_id)))
                self._load += 1
            for endpoint_id, (lane, n) in asked.items():
                got = taken.get(endpoint_id, 0)
                lane.backlog = n == 0 or got >= n
                if got:
                    self._pump(lane)
            self._on_room()
            if not claim.more:
                await self._nap(s.poll_interval_seconds)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- sending ------------------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        while lane.active < lane.concurrency and lane.queue:
            lane.active += 1
            task = asyncio.create_task(self._slot(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _slot(self, lane: _Lane) -> None:
        """One of the lane's ``concurrency`` slots: sends its queued deliveries, one after
        another, until the queue is empty (one task per slot, not per attempt)."""
        try:
            while lane.queue and not self._stopping:
                job = lane.queue.popleft()
                try:
                    await self._attempt(lane, job)
                finally:
                    self._load -= 1
                    if lane.backlog and not self._stopping and 2 * lane.free >= lane.capacity:
                        self._wake.set()  # room for its next batch: claim it
                    self._on_room()
        finally:
            lane.active -= 1
            if lane.load == 0:
                lane.idle_since = time.monotonic()

    async def _rate_token(self, lane: _Lane, job: Job) -> bool:
        """Take one of the lane's rate tokens while the job may still start safely;
        ``False`` (no token taken) when its lease would not outlast the wait.

        Waiting in ``acquire`` instead would take the token even when the lease ran out
        meanwhile: the job released, the token spent, and at a rate slower than a lease's
        spare time every job of the endpoint would be released, forever."""
        limiter = lane.limiter
        assert limiter is not None
        per_token = limiter.time_period / limiter.max_rate
        while not limiter.has_capacity():
            spare = job.lease_deadline - time.monotonic() - self.settings.timeout_seconds
            spare -= _LEASE_MARGIN
            if spare <= 0:
                return False
            await asyncio.sleep(min(spare, per_token))
        await limiter.acquire()  # at once: it has the capacity
        return True

    async def _attempt(self, lane: _Lane, job: Job) -> None:
        try:
            left = job.lease_deadline - time.monotonic()
            safe = left >= self.settings.timeout_seconds + _LEASE_MARGIN
            if safe and lane.limiter is not None:
                safe = await self._rate_token(lane, job)
            if not safe:
                self._release.append(job.claimed)  # too late to start safely: next round
                self._wake.set()
                return
            t0 = time.monotonic()
            outcome = await self._send(lane, job)
            lane.answered(time.monotonic() - t0)
            await self._outcomes.put((outcome, job))
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug; the lease expiry retries it
            _log.exception("delivery %s: unexpected error", job.claimed.id)

    def _headers(self, lane: _Lane, delivery_id: str, body: bytes) -> list[tuple[bytes, bytes]]:
        """The attempt's own headers (``Host`` and the endpoint's are in its target)."""
        timestamp = int(time.time())
        keys = lane.signing_keys()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"user-agent", self._user_agent),
            (b"webhook-id", delivery_id.encode()),
            (b"webhook-timestamp", b"%d" % timestamp),
            (b"webhook-signature", sign(keys, delivery_id, timestamp, body).encode()),
        ]
        return headers

    def _body(self, claimed: Claimed, envelope: bytes) -> bytes:
        found = self.builders.lookup(claimed.event_name)
        if found is None:
            return envelope
        key = f"{claimed.event_id}\0{found[0]}"
        cached = self._bodies.get(key)
        if cached is None:
            cached = self.builders.build(claimed.event_name, envelope)
            self._bodies.put(key, cached)
        return cached

    async def _send(self, lane: _Lane, job: Job) -> Outcome:
        endpoint = lane.endpoint
        claimed = job.claimed
        s = self.settings
        started = datetime.now(UTC)
        if endpoint.disabled:
            return self._final(
                claimed, started, "endpoint_disabled", endpoint.disabled_reason, attempted=False
            )
        if job.body is None:
            return self._final(claimed, started, "builder_error", "the event's body is missing")
        try:
            body = self._body(claimed, job.body)
        except BuilderError as exc:
            self.metrics.builder_errors.inc()
            return self._final(claimed, started, "builder_error", str(exc))
        target = lane.target
        if target is None:
            error = f"the endpoint's URL cannot be used: {lane.target_error}"
            return self._failure(endpoint, claimed, started, None, None, "refused", error)
        if s.https_only and not endpoint.url.startswith("https://"):
            return self._failure(
                endpoint, claimed, started, None, None, "refused", "https_only: not an https URL"
            )
        headers = self._headers(lane, claimed.id, body)
        hop = _trace_hop(job.body)
        if hop is not None:
            headers.append((b"traceparent", hop.header.encode()))
        t0 = time.perf_counter()
        retry_after: float | None = None
        try:
            async with asyncio.timeout(s.timeout_seconds):
                answer = await lane.http.post(target, headers, body, s.timeout_seconds)
        except (TimeoutError, httpcore.TimeoutException):
            latency = (time.perf_counter() - t0) * 1000
            message = f"no answer within {s.timeout_seconds:g} s"
            return self._failure(endpoint, claimed, started, None, latency, "timeout", message)
        except _HTTP_ERRORS as exc:
            latency = (time.perf_counter() - t0) * 1000
            kind = "refused" if isinstance(exc, DestinationRefusedError) else "connection_error"
            message = str(exc) or type(exc).__name__
            return self._failure(endpoint, claimed, started, None, latency, kind, message)
        latency = (time.perf_counter() - t0) * 1000
        code = answer.status
        text = answer.body.decode(errors="replace")
        if code in (429, 503) and answer.retry_after:
            retry_after = _retry_after(answer.retry_after, started)
        if 200 <= code < 300:
            self.metrics.observe("success", latency)
            return Outcome(
                endpoint_id=claimed.endpoint_id,
                delivery_id=claimed.id,
                token=claimed.token,
                attempt=claimed.attempts + 1,
                step=claimed.step + 1,
                started_at=started,
                status_code=code,
                latency_ms=latency,
                outcome="success",
                error=None,
                response_body=text,
                status="succeeded",
                next_attempt_at=None,
            )
        if code == 410:
            self.metrics.observe("gone", latency)
            return Outcome(
                endpoint_id=claimed.endpoint_id,
                delivery_id=claimed.id,
                token=claimed.token,
                attempt=claimed.attempts + 1,
                step=claimed.step + 1,
                started_at=started,
                status_code=code,
                latency_ms=latency,
                outcome="gone",
                error="the endpoint answered 410 Gone: it is disabled",
                response_body=text,
                status="failed",
                next_attempt_at=None,
            )
        return self._failure(
            endpoint,
            claimed,
            started,
            code,
            latency,
            "http_error",
            f"HTTP {code}",
            text,
            retry_after,
        )

    def _final(
        self,
        claimed: Claimed,
        started: datetime,
        outcome: str,
        error: str | None,
        *,
        attempted: bool = True,
    ) -> Outcome:
        return Outcome(
            endpoint_id=claimed.endpoint_id,
            delivery_id=claimed.id,
            token=claimed.token,
            attempt=claimed.attempts + (1 if attempted else 0),
            step=claimed.step + (1 if attempted else 0),
            started_at=started,
            status_code=None,
            latency_ms=None,
            outcome=outcome,
            error=error,
            response_body=None,
            status="failed",
            next_attempt_at=None,
            attempted=attempted,
        )

    def _failure(
        self,
        endpoint: EndpointRecord,
        claimed: Claimed,
        started: datetime,
        code: int | None,
        latency: float | None,
        outcome: str,
        error: str,
        text: str | None = None,
        retry_after: float | None = None,
    ) -> Outcome:
        s = self.settings
        self.metrics.observe(outcome, latency)
        step = claimed.step + 1
        status: Status = "pending"
        next_at: datetime | None = None
        if step < len(s.retry_schedule):
            delay = s.retry_schedule[step] * random.uniform(1 - s.jitter, 1 + s.jitter)
            if retry_after is not None:
                delay = max(delay, min(retry_after, s.max_retry_after_seconds))
            next_at = datetime.now(UTC) + timedelta(seconds=delay)
        else:
            status = "failed"
        return Outcome(
            endpoint_id=claimed.endpoint_id,
            delivery_id=claimed.id,
            token=claimed.token,
            attempt=claimed.attempts + 1,
            step=step,
            started_at=started,
            status_code=code,
            latency_ms=latency,
            outcome=outcome,
            error=error[:1000],
            response_body=text,
            status=status,
            next_attempt_at=next_at,
        )

    # -- recording ----------------------------------------------------------------------

    async def _recorder(self) -> None:
        while True:
            first = await self._outcomes.get()
            batch = [first]
            if not self._stopping and self._outcomes.qsize() < _RECORD_BATCH:
                await asyncio.sleep(_RECORD_LINGER)
            while len(batch) < _RECORD_BATCH and not self._outcomes.empty():
                batch.append(self._outcomes.get_nowait())
            try:
                await self._record(batch)
            except Exception:
                _log.exception("could not record %d delivery outcomes", len(batch))
            finally:
                for _ in batch:
                    self._outcomes.task_done()

    async def _record(self, batch: list[tuple[Outcome, Job | None]]) -> None:
        delay = 0.2
        while True:
            try:
                await self.store.record([o for o, _ in batch])
                break
            except EventmillError as exc:
                if self._stopping:
                    _log.warning("could not record outcomes before closing: %s", exc)
                    return
                self.problems["recorder"] = f"cannot record outcomes: {exc}"
                _log.warning("cannot record delivery outcomes (retrying): %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.problems.pop("recorder", None)
        self._journal(batch)
        if any(o.status == "failed" for o, _ in batch):
            self._sweep.set()
        await self._endpoint_health(batch)

    def _journal(self, batch: list[tuple[Outcome, Job | None]]) -> None:
        """Trace hop ``delivery.attempt`` per attempt (the journal buffers; never waits)."""
        journal = self.store.store.journal
        for outcome, job in batch:
            if job is None or not outcome.attempted:
                continue
            detail: dict[str, object] = {
                "endpoint_id": job.claimed.endpoint_id,
                "delivery_id": outcome.delivery_id,
                "attempt": outcome.attempt,
                "outcome": outcome.outcome,
                "latency_ms": None if outcome.latency_ms is None else round(outcome.latency_ms, 3),
            }
            if outcome.status_code is not None:
                detail["status_code"] = outcome.status_code
            if outcome.error is not None:
                detail["error"] = outcome.error[:200]
            journal.hop(job.claimed.event_id, "delivery.attempt", **detail)

    async def _endpoint_health(self, batch: list[tuple[Outcome, Job | None]]) -> None:
        """Endpoint state from the batch's outcomes: failing since, recovered, disabled."""
        now = datetime.now(UTC)
        last: dict[str, Outcome] = {}
        gone: set[str] = set()
        for outcome, job in batch:
            if job is None or not outcome.attempted or outcome.outcome == "builder_error":
                continue
            last[job.claimed.endpoint_id] = outcome
            if outcome.outcome == "gone":
                gone.add(job.claimed.endpoint_id)
        for endpoint_id, outcome in last.items():
            lane = self._lanes.get(endpoint_id)
            if lane is None:
                continue
            endpoint = lane.endpoint
            try:
                if endpoint_id in gone:
                    reason = "the endpoint answered 410 Gone"
                    done = await self.store.disable(endpoint_id, reason)
                    if done is not None:
                        lane.endpoint = done
                        await self._announce_disabled(done, reason)
                elif outcome.outcome == "success":
                    if endpoint.failing_since is not None:
                        await self.store.mark_healthy(endpoint_id)
                        lane.endpoint = replace(endpoint, failing_since=None)
                elif endpoint.failing_since is None:
                    await self.store.mark_failing(endpoint_id, outcome.started_at)
                    lane.endpoint = replace(endpoint, failing_since=outcome.started_at)
                else:
                    cutoff = now - timedelta(seconds=self.settings.disable_after_seconds)
                    if endpoint.failing_since <= cutoff:
                        since = endpoint.failing_since.isoformat()
                        reason = f"every attempt failed since {since}"
                        done = await self.store.disable(endpoint_id, reason, failing_before=cutoff)
                        if done is not None:
                            lane.endpoint = done
                            await self._announce_disabled(done, reason)
            except EventmillError as exc:
                _log.warning("endpoint %s: could not update its state: %s", endpoint_id, exc)

    async def _announce_disabled(self, endpoint: EndpointRecord, reason: str) -> None:
        """Publish ``endpoint.disabled`` on the events topic (its owner can be told)."""
        _log.warning("endpoint %s disabled: %s", endpoint.id, reason)
        event = Event(
            event_name="endpoint.disabled",
            source="system",
            user_id=endpoint.user_id,
            payload={
                "endpoint_id": endpoint.id,
                "url": endpoint.url,
                "reason": reason,
                "failing_since": endpoint.failing_since.isoformat()
                if endpoint.failing_since
                else None,
                "disabled_at": endpoint.updated_at.isoformat(),
            },
        )
        try:
            await self._bus().publish(self._topic, event.to_message())
        except EventmillError as exc:
            _log.warning("could not publish endpoint.disabled for %s: %s", endpoint.id, exc)

    # -- dead letters, idle lanes, backlog ----------------------------------------------

    async def _sweeper(self) -> None:
        next_prune = time.monotonic() + min(60.0, self.settings.retention_interval_seconds)
        while True:
            try:
                await self.publish_dead_letters()
                self.metrics.due.set(await self.store.due_count())
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.settings.retention_interval_seconds
                    await self.prune()
            except EventmillError as exc:
                _log.warning("delivery sweep failed: %s", exc)
            await self._retire_idle_lanes()
            self._sweep.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep.wait(), _SWEEP_SECONDS)

    async def prune(self) -> int:
        """The retention pass: delete finished deliveries older than
        ``retention_days``, batch after batch (each its own short transaction, with a
        pause between them for other writers); return how many."""
        days = self.settings.retention_days
        if days is None:
            return 0
        before = datetime.now(UTC) - timedelta(days=days)
        total = 0
        while not self._stopping:
            n = await self.store.prune(before, batch=self.settings.retention_batch)
            total += n
            self.metrics.pruned.inc(n)
            if n < self.settings.retention_batch:
                break
            await asyncio.sleep(0.05)
        if total:
            _log.info("retention: deleted %d deliveries created before %s", total, before)
        return total

    async def publish_dead_letters(self) -> int:
        """Publish failed deliveries not published yet to :data:`DEAD_LETTER_TOPIC`."""
        total = 0
        while True:
            dead = await self.store.undead(100)
            if not dead:
                return total
            messages = [
                dead_letter(
                    d.id,
                    {
                        "delivery_id": d.id,
                        "event_id": d.event_id,
                        "endpoint_id": d.endpoint_id,
                        "user_id": d.user_id,
                        "event_name": d.event_name,
                        "attempts": d.attempts,
                        "last_status_code": d.last_status_code,
                        "last_error": d.last_error,
                        "created_at": d.created_at,
                        "failed_at": d.finished_at,
                    },
                )
                for d in dead
            ]
            await self._bus().publish(DEAD_LETTER_TOPIC, *messages)
            await self.store.mark_dead([d.id for d in dead])
            self.metrics.dead.inc(len(dead))
            total += len(dead)

    async def _retire_idle_lanes(self) -> None:
        cutoff = time.monotonic() - 30.0
        for endpoint_id, lane in list(self._lanes.items()):
            if lane.load == 0 and lane.idle_since < cutoff:
                del self._lanes[endpoint_id]
                await lane.http.close_idle()
            else:
                await lane.http.close_idle(expired_only=True)
