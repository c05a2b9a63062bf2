"""The dispatcher: claims due deliveries, sends them, records what happened.

Work flows through three bounded stages:

* the **claimer** leases due deliveries from the store (oldest due first), never more
  than the room left under ``max_in_flight``, and skipping endpoints whose lane is
  full, so one slow endpoint's backlog never crowds out the others;
* one **lane** per endpoint holds its deliveries: at most ``concurrency_per_endpoint``
  attempts in flight and, if the endpoint has a ``rate_limit``, that many per second
  (aiolimiter's leaky bucket); a lane holds at most twice its concurrency, and a
  hanging endpoint fills only its own lane;
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
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx
import orjson
from aiolimiter import AsyncLimiter

from eventmill.delivery.builders import BuilderError, PayloadBuilders
from eventmill.delivery.config import DeliverySettings
from eventmill.delivery.metrics import DeliveryMetrics
from eventmill.delivery.network import (
    AddressPolicy,
    DestinationRefusedError,
    Resolver,
    guarded_transport,
)
from eventmill.delivery.signing import sign
from eventmill.delivery.store import Claimed, DeliveryStore, EndpointRecord, Outcome, Status
from eventmill.errors import EventmillError
from eventmill.events import Event
from eventmill.message import Message
from eventmill.pubsub.base import Publisher

__all__ = ["DEAD_LETTER_TOPIC", "Dispatcher", "Job"]

_log = logging.getLogger("eventmill.delivery")

DEAD_LETTER_TOPIC: Final = "deliveries.dead"
"""Where failed deliveries are published (their JSON, see :func:`dead_letter`)."""

RESPONSE_BODY_BYTES: Final = 1024
"""How much of a response body an attempt keeps."""

_LEASE_MARGIN: Final = 2.0
"""An attempt starts only while its lease has ``timeout_seconds`` + this left."""
_BODY_CACHE: Final = 1024
_RECORD_BATCH: Final = 500
_SWEEP_SECONDS: Final = 15.0


@dataclass(slots=True)
class Job:
    """A leased delivery waiting in its endpoint's lane."""

    claimed: Claimed
    lease_deadline: float
    """``time.monotonic()`` at which the lease ends."""
    body: bytes | None


class _Lane:
    """One endpoint's deliveries: a bounded queue, a concurrency cap, a rate limit."""

    __slots__ = (
        "active",
        "capacity",
        "concurrency",
        "endpoint",
        "idle_since",
        "limiter",
        "queue",
        "rate",
        "reserved",
    )

    def __init__(self, endpoint: EndpointRecord, concurrency: int) -> None:
        self.queue: deque[Job] = deque()
        self.active = 0
        self.reserved = 0
        self.concurrency = concurrency
        self.endpoint = endpoint
        self.rate: float | None = None
        self.limiter: AsyncLimiter | None = None
        self.capacity = 2 * concurrency
        self.idle_since = time.monotonic()
        self.refresh(endpoint)

    def refresh(self, endpoint: EndpointRecord) -> None:
        self.endpoint = endpoint
        if endpoint.rate_limit != self.rate:
            self.rate = endpoint.rate_limit
            if self.rate is None:
                self.limiter = None
                self.capacity = 2 * self.concurrency
            else:
                if self.rate >= 1:
                    self.limiter = AsyncLimiter(self.rate, 1.0)
                else:
                    self.limiter = AsyncLimiter(1, 1.0 / self.rate)
                # what the bucket lets through in ~10 s, so leases never run out waiting
                self.capacity = max(1, min(2 * self.concurrency, int(self.rate * 10)))

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


def _retry_after(response: httpx.Response, now: datetime) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
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
    ) -> None:
        self.store = store
        self.settings = settings
        self.builders = builders
        self.metrics = metrics
        self._bus = bus
        self._topic = topic
        self._policy = AddressPolicy(settings.allow_networks)
        self._resolver = resolver
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
        self._client: httpx.AsyncClient | None = None
        self.problems: dict[str, str] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP client and start the claimer, the recorder and the sweeper."""
        s = self.settings
        transport = guarded_transport(
            self._policy,
            max_connections=s.max_in_flight,
            max_keepalive=min(s.max_in_flight, 1000),
            resolver=self._resolver,
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                s.timeout_seconds, connect=min(s.connect_timeout_seconds, s.timeout_seconds)
            ),
            follow_redirects=False,
            trust_env=False,
        )
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
        if self._client is not None:
            await self._client.aclose()

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
            lane = self._lanes[endpoint.id] = _Lane(
                endpoint, self.settings.concurrency_per_endpoint
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
            full = [eid for eid, lane in self._lanes.items() if lane.free <= 0]
            limit = min(s.claim_batch, room)
            self._wake.clear()
            try:
                claim = await self.store.claim(limit, lease_seconds=s.lease_seconds, exclude=full)
            except EventmillError as exc:
                self.problems["dispatcher"] = f"cannot claim deliveries: {exc}"
                _log.warning("cannot claim deliveries: %s", exc)
                delay = min(s.poll_interval_seconds * 5, 5.0)
                continue
            self.problems.pop("dispatcher", None)
            deadline = time.monotonic() + s.lease_seconds
            over: list[Claimed] = []
            touched: set[_Lane] = set()
            for claimed in claim.deliveries:
                endpoint = claim.endpoints.get(claimed.endpoint_id)
                if endpoint is None:
                    continue  # deleted meanwhile: its deliveries went with it
                lane = self._lane(endpoint)
                if lane.free <= 0:
                    over.append(claimed)
                    continue
                lane.queue.append(Job(claimed, deadline, claim.bodies.get(claimed.event_id)))
                self._load += 1
                touched.add(lane)
            for lane in touched:
                self._pump(lane)
            if over:
                self._release.extend(over)
            if len(claim.deliveries) < limit:
                await self._nap(s.poll_interval_seconds)

    async def _nap(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- sending ------------------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        while lane.active < lane.concurrency and lane.queue:
            job = lane.queue.popleft()
            lane.active += 1
            task = asyncio.create_task(self._attempt(lane, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.metrics.in_flight.labels(lane.endpoint.id).set(lane.load)

    def _done(self, lane: _Lane) -> None:
        lane.active -= 1
        self._load -= 1
        if lane.load == 0:
            lane.idle_since = time.monotonic()
        if not self._stopping:
            self._pump(lane)
        self._on_room()

    async def _attempt(self, lane: _Lane, job: Job) -> None:
        try:
            if lane.limiter is not None:
                await lane.limiter.acquire()
            left = job.lease_deadline - time.monotonic()
            if left < self.settings.timeout_seconds + _LEASE_MARGIN:
                self._release.append(job.claimed)  # too late to start safely: next round
                self._wake.set()
                return
            outcome = await self._send(lane.endpoint, job)
            await self._outcomes.put((outcome, job))
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug; the lease expiry retries it
            _log.exception("delivery %s: unexpected error", job.claimed.id)
        finally:
            self._done(lane)

    def _headers(self, endpoint: EndpointRecord, delivery_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        keys = endpoint.signing_keys(datetime.now(UTC))
        headers = dict(endpoint.headers)
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": self.settings.user_agent,
                "webhook-id": delivery_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(keys, delivery_id, timestamp, body),
            }
        )
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

    async def _send(self, endpoint: EndpointRecord, job: Job) -> Outcome:
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
            self.metrics.attempts.labels(endpoint.id, "builder_error").inc()
            return self._final(claimed, started, "builder_error", str(exc))
        if s.https_only and not endpoint.url.startswith("https://"):
            return self._failure(
                endpoint, claimed, started, None, None, "refused", "https_only: not an https URL"
            )
        assert self._client is not None
        headers = self._headers(endpoint, claimed.id, body)
        t0 = time.perf_counter()
        code: int | None = None
        text: str | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(s.timeout_seconds):
                request = self._client.build_request(
                    "POST", endpoint.url, content=body, headers=headers
                )
                response = await self._client.send(request, stream=True)
                try:
                    code = response.status_code
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size >= RESPONSE_BODY_BYTES:
                            break
                    text = b"".join(chunks)[:RESPONSE_BODY_BYTES].decode(errors="replace")
                    if code in (429, 503):
                        retry_after = _retry_after(response, started)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            latency = (time.perf_counter() - t0) * 1000
            message = f"no answer within {s.timeout_seconds:g} s"
            return self._failure(endpoint, claimed, started, None, latency, "timeout", message)
        except httpx.HTTPError as exc:
            latency = (time.perf_counter() - t0) * 1000
            refused = isinstance(exc.__cause__, DestinationRefusedError) or isinstance(
                exc.__context__, DestinationRefusedError
            )
            kind = "refused" if refused else "network_error"
            message = str(exc) or type(exc).__name__
            return self._failure(endpoint, claimed, started, None, latency, kind, message)
        latency = (time.perf_counter() - t0) * 1000
        if 200 <= code < 300:
            self.metrics.observe(endpoint.id, "success", latency)
            return Outcome(
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
            self.metrics.observe(endpoint.id, "gone", latency)
            return Outcome(
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
        self.metrics.observe(endpoint.id, outcome, latency)
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
        if any(o.status == "failed" for o, _ in batch):
            self._sweep.set()
        await self._endpoint_health(batch)

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
        while True:
            try:
                await self.publish_dead_letters()
                self.metrics.due.set(await self.store.due_count())
            except EventmillError as exc:
                _log.warning("delivery sweep failed: %s", exc)
            self._retire_idle_lanes()
            self._sweep.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep.wait(), _SWEEP_SECONDS)

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

    def _retire_idle_lanes(self) -> None:
        cutoff = time.monotonic() - 30.0
        for endpoint_id, lane in list(self._lanes.items()):
            if lane.load == 0 and lane.idle_since < cutoff:
                del self._lanes[endpoint_id]
                self.metrics.forget(endpoint_id)
