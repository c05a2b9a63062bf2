"""A subscription of the ``nats://`` backend: a pull consumer, a pull loop and a local buffer.

Receiving: a task keeps pull requests (``$JS.API.CONSUMER.MSG.NEXT``) outstanding
on the consumer, each for ``batch // 2`` messages and lingering ``fetch_timeout``
seconds, so messages stream in as they are published with no round trip per
batch. It asks only for as many messages as the local buffer has room for:
buffered + still requested <= ``NatsConfig.batch`` (messages the server had
already sent for an expired request may exceed it by one request's worth).
The server fills waiting requests oldest first, so each delivery counts against
the oldest request; each request has its own reply subject, so the status that
ends one (408 expired, 409) names it. A request that outlived its expiry is
forgotten too, and after a reconnect all are re-issued.

``__anext__`` hands messages out of the buffer to any number of concurrent
callers, at most ``max_unsettled`` of them not yet settled. Settling is synchronous:
``ack()``/``nack()`` only queue the ``+ACK``/``-NAK`` reply, and a second task sends
the queue to the server without blocking the consumer, then flushes the connection
(a PING the server answers once it has read what came before). The queue is bounded
by the consumer's ``max_ack_pending`` (``max_unsettled``), since the server delivers
no more while that many messages are unsettled. ``close()`` withdraws the pull
requests (interrupting none: nothing waits for them), sends what is queued, naks
the messages handed out or buffered but not settled (so the group gets them again
without waiting for ``ack_wait``), and, if it sent anything or an earlier flush is
outstanding, flushes the connection, so the settlements have reached the server
when it returns. An ephemeral subscription with nothing to send makes no round trip:
its consumer is deleted with a request nobody waits for (the server reaps it after
``inactive_threshold`` if that is lost).

A group subscription's close first has the server drop its pull requests, which the
server cannot be told to do, whatever it holds: messages the server is sending those
requests right then would otherwise reach an inbox about to go, and come back only
after ``ack_wait``; they are handed back with the unsettled ones, the nacks still
queued, and nacks sent whose redelivery came due less than ``_NAK_IN_FLIGHT`` ago or
is still to come. A request stays queued on the server after its inbox is gone
until it expires or the consumer next looks at it, and a message that becomes due
for redelivery while such a dead request is the only one waiting makes nats-server
(2.9.x) step its stream pointer back as if it had not sent a new message: the last
message delivered goes out once more as new (a duplicate, acked or not) and the
redelivery is dropped until ``ack_wait`` (seen as delivery counts jumping by two).
And a redelivery sent to a request of ours that still listens reaches an inbox
that ``close()`` unsubscribes, where nats-py drops it (``ack_wait`` again). So
``close()``:

1. lets ``_PULL_MARGIN`` pass since the last nak it sent came due, so that the
   server has acted on it while our requests still listen (its redelivery comes to
   them, or to another member); no answer of the server tells when it has: a PING
   overtakes what nats-py has not written yet, and the consumer takes naks on a
   task of its own;
2. unsubscribes the inbox on the server but keeps reading it;
3. sends one more pull request, for one message and expiring at once, answered on
   an inbox of its own (the barrier). The consumer answers it on a pass over its
   waiting requests that drops every request of ours (no interest since the
   unsubscribe, which the server read first), and after everything it sent to our
   inbox (one queue to our connection);
4. naks what arrived meanwhile, what the barrier may have brought, the unsettled
   messages and the queued nacks, at once (with ``nak_delay``): another member, or
   the next one to subscribe, gets them within a round trip.

Should the barrier get no answer (the server is away), the naks carry a delay that
outlasts every pull request of ours still waiting on the server instead: it
received a request before it answered it and before it received a later nak, so a
request expires at most ``fetch_timeout`` after the first message it brought, or
else after the nak is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from typing import Any, Final, Protocol

import nats.errors
import nats.js.errors
from nats.js import api

from eventmill.errors import SubscribeError
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._subscription import BufferedSubscription, Unsettled, stop_task
from eventmill.pubsub.nats._config import NatsConfig

__all__ = ["Host", "NatsSubscription"]

log = logging.getLogger("eventmill.pubsub.nats")

_ACK = b"+ACK"
_NAK = b"-NAK"
_TERM = b"+TERM"
_PULL_MARGIN = 0.1  # seconds within which the server acts on a pull request or a nak
_SILENCE = 1.0  # seconds past a pull request's expiry without word from the server
_NEVER = float("inf")
# close()'s barrier: a pull request for one message that expires at once (5 ms: long
# enough for the consumer's loop to reach it first), answered on an inbox of its own.
_BARRIER = json.dumps({"batch": 1, "expires": 5_000_000}).encode()
_NAK_IN_FLIGHT = 1.0  # seconds after a nak comes due in which its redelivery may reach us
ID_HEADER = "Eventmill-Id"
ID_JSON_HEADER = "Eventmill-Id-Json"  # ids that cannot be a header value as they are
MSG_ID_HEADER = "Nats-Msg-Id"
METADATA_HEADER = "Eventmill-Metadata"


def decode(msg: Any, stream: str) -> tuple[str, dict[str, str]]:
    """Return the eventmill id and metadata carried by a JetStream message's headers.

    Messages published by other NATS clients (no eventmill headers) get the id
    ``<stream>:<stream sequence>`` and their non-``Nats-`` headers as metadata.
    """
    headers: dict[str, str] | None = msg.headers
    if headers:
        mid = None
        if ID_JSON_HEADER in headers:
            with contextlib.suppress(ValueError):
                mid = json.loads(headers[ID_JSON_HEADER])
        mid = mid or headers.get(MSG_ID_HEADER) or headers.get(ID_HEADER)
        raw_md = headers.get(METADATA_HEADER)
        if raw_md is not None:
            try:
                metadata: dict[str, str] = json.loads(raw_md)
            except ValueError:
                metadata = {METADATA_HEADER: raw_md}
        else:
            metadata = {
                k: v
                for k, v in headers.items()
                if not k.startswith(("Nats-", "Eventmill-")) and isinstance(v, str)
            }
        if mid:
            return mid, metadata
    else:
        metadata = {}
    return f"{stream}:{_stream_seq(msg.reply or '')}", metadata


def _stream_seq(reply: str) -> int | None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    # or (servers >= 2.10) $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>
    #                      .<stream seq>.<consumer seq>.<ts>.<pending>[.<token>]
    tokens = reply.split(".")
    try:
        return int(tokens[5] if len(tokens) == 9 else tokens[7])
    except (IndexError, ValueError):
        return None


def _nak_payload(delay: float, minimum: float) -> bytes:
    delay = max(delay, minimum)
    if delay <= 0:
        return _NAK
    return b"-NAK " + json.dumps({"delay": int(delay * 1_000_000_000)}).encode()


_CONFIRM_AFTER: Final = 0.05
"""Seconds without new settlements after which the settle loop confirms (flushes) what
it sent, so that an idle close has nothing left to confirm."""


async def _flush(nc: Any, timeout: float) -> None:
    """``nc.flush(timeout)`` (PING, wait for the PONG), shielded: nats-py cannot have a
    flush cancelled (the PONG that comes later finds its future cancelled and breaks
    the connection's read loop), so a cancelled caller leaves the flush to finish."""
    task = asyncio.ensure_future(nc.flush(timeout=timeout))
    task.add_done_callback(_retrieve)
    await asyncio.shield(task)


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


class Host(Protocol):
    """What a subscription needs of its bus (private by convention)."""

    @property
    def config(self) -> NatsConfig: ...

    @property
    def _nc(self) -> Any:
        """The nats-py client (untyped)."""

    @property
    def _js(self) -> Any:
        """Its JetStream context (untyped)."""

    def _backoff(self) -> Backoff:
        """The delays between retries of this bus."""

    def _forget(self, sub: NatsSubscription) -> None:
        """Unregister a closed (or aborted) subscription."""


class NatsSubscription(BufferedSubscription[Message]):
    """A subscription to one topic (see :class:`eventmill.pubsub.base.Subscription`).

    With a ``group``, it binds to the group's durable pull consumer, shared by every
    member. Without, it owns an ephemeral pull consumer that starts at the next
    message published and is deleted on close.
    """

    def __init__(
        self,
        owner: Host,
        topic: str,
        group: str | None,
        stream: str,
        consumer: str | None,
        subject: str,
    ) -> None:
        cfg = owner.config
        what = f"nats:// subscription to {topic!r}" + (f" (group {group!r})" if group else "")
        super().__init__(topic, group, Unsettled(cfg.max_unsettled, cfg.stall_warning, log, what))
        self._owner = owner
        self._subject = subject
        self._stream = stream
        self._consumer = consumer  # durable name; the ephemeral's name once created
        self._batch = cfg.batch if cfg.max_unsettled is None else min(cfg.batch, cfg.max_unsettled)
        self._nak_delay = cfg.nak_delay
        self._nak = _nak_payload(0.0, cfg.nak_delay)
        self._half = max(1, self._batch // 2)
        # outstanding pull requests: reply subject ->
        # [messages still owed, expiry (loop time at issue + fetch_timeout),
        #  loop time its first message arrived (the server had it by then) or inf]
        self._requests: dict[str, list[float]] = {}
        self._owed = 0
        self._pull_wanted = asyncio.Event()
        self._broken = False  # the consumer did not answer: check / re-create it
        self._throttled = False  # the server refused a pull: wait before the next one
        self._inbox = ""
        self._tokens = itertools.count()
        self._next_subject = ""
        # reply subject of every delivered message not settled yet (buffered or handed out)
        self._unsettled: dict[Message, str] = {}
        self._late: list[str] = []  # reply subjects of messages that arrived while closing
        self._terminate: set[Message] = set()
        self._settlements: list[tuple[str, bytes]] = []
        self._settle_wanted = asyncio.Event()
        self._nak_queued = False  # a nak waits in _settlements
        self._nak_due = -_NEVER  # time.monotonic() at which the latest nak sent comes due
        # batches of settlements sent, and how many of them a flush confirmed
        self._sent = 0
        self._confirmed = 0
        self._isub: Any = None
        self._next_seq: int | None = None  # ephemeral: first stream sequence not yet seen
        self._last_reply = ""  # ephemeral: ack subject of the last message received
        self._puller: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    # -- contract ------------------------------------------------------------------------

    def _take(self, msg: Message) -> Message:
        if self._batch - len(self._buffer) - self._owed >= self._half:
            self._pull_wanted.set()
        return msg

    def term(self, msg: Message) -> bool:
        """Settle ``msg`` for good: the server never delivers it again (``+TERM``).

        Counts as a nack for the message's state. Returns what ``msg.nack()`` returns.
        """
        if msg in self._unsettled:
            self._terminate.add(msg)
        ok = msg.nack()
        self._terminate.discard(msg)
        return ok

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_all()
        self._limit.close()
        await self._stop_tasks()  # the flusher first: what it has not sent, close() sends
        nc = self._owner._nc
        requests = list(self._requests.values())
        self._requests.clear()
        # Hand unsettled and nacked messages back to the group now, not after ack_wait,
        # but only once no pull request of ours waits on the server (module docstring).
        # A group's requests are purged whatever this subscription holds: the server may
        # be sending them messages right now (they come into _late meanwhile).
        purged = False
        if (
            self._group is not None
            and nc is not None
            and nc.is_connected
            and self._isub is not None
        ):
            try:
                purged = await self._purge_requests(nc)
            except Exception as exc:
                log.debug("nats: closing subscription %s: %s", self._topic, type(exc).__name__)
        try:
            if self._isub is not None:
                await self._isub.unsubscribe()  # no _on_message after this
        except Exception as exc:
            log.debug("nats: closing subscription %s: %s", self._topic, type(exc).__name__)
        hand_back = self._group is not None and bool(
            self._unsettled
            or self._late
            or self._nak_queued
            or time.monotonic() <= self._nak_due + _NAK_IN_FLIGHT
        )
        if hand_back:
            nak = self._nak
            if not purged:  # wait until the latest request of ours expired, by pull_until
                now = asyncio.get_running_loop().time()
                timeout = self._owner.config.fetch_timeout
                pull_until = max((min(r[2], now) + timeout for r in requests), default=None)
                wait = 0.0 if pull_until is None else pull_until + _PULL_MARGIN - now
                nak = _nak_payload(wait, self._nak_delay)
                self._settlements = [
                    (reply, nak if payload == self._nak else payload)
                    for reply, payload in self._settlements
                ]
            for reply in itertools.chain(self._unsettled.values(), self._late):
                self._settlements.append((reply, nak))
        self._unsettled.clear()
        self._late.clear()
        self._buffer.clear()
        try:
            await self._send_settlements()
            if self._group is None and self._consumer is not None and nc is not None:
                # Nobody waits for the answer: an idle close makes no round trip.
                js_prefix = self._owner._js._prefix
                await nc.publish(f"{js_prefix}.CONSUMER.DELETE.{self._stream}.{self._consumer}")
            if self._sent != self._confirmed and nc is not None and nc.is_connected:
                await _flush(nc, self._owner.config.publish_timeout)
                self._confirmed = self._sent
        except Exception as exc:  # the server is away: the consumer's ack_wait takes over
            log.debug("nats: closing subscription %s: %s", self._topic, type(exc).__name__)
        self._owner._forget(self)

    async def _purge_requests(self, nc: Any) -> bool:
        """Have the server drop this subscription's pull requests, reading what it sent
        them meanwhile (into ``_late``); True once it has (see the module docstring)."""
        isub = self._isub
        timeout = self._owner.config.publish_timeout
        wait = self._nak_due + _PULL_MARGIN - time.monotonic()
        if 0 < wait <= 2 * _PULL_MARGIN:
            # A nak sent (or come due) just now: the server acts on it while our requests
            # still listen, so its redelivery reaches them (_late) or another member. No
            # answer of the server says when it has: a PING overtakes what nats-py has
            # not written yet, and the consumer handles naks on a task of its own.
            await asyncio.sleep(wait)
        # nats-py's unsubscribe() would drop what is still on its way to the inbox.
        await nc._send_unsubscribe(isub._id)
        # Its own inbox, not nc.request()'s: a message delivered to a pull request
        # carries the stream's subject, which nats-py's request() cannot match.
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on_answer(msg: Any) -> None:
            if not answer.done():
                answer.set_result(msg)

        bsub = await nc.subscribe(nc.new_inbox(), cb=on_answer)
        try:
            await nc.publish(self._next_subject, _BARRIER, reply=bsub.subject)
            async with asyncio.timeout(timeout):
                barrier = await answer
                await isub._pending_queue.join()  # _on_message took what came before it
        finally:
            with contextlib.suppress(Exception):
                await bsub.unsubscribe()
        headers = barrier.headers
        status = headers.get("Status") if headers else None
        if status is None and barrier.reply:
            self._late.append(barrier.reply)  # a message the barrier brought goes back too
        return status != "400"  # refused as malformed: no pass over the requests

    # -- lifecycle used by NatsPubSub ----------------------------------------------------

    async def _start(self) -> None:
        await self._create_consumer()  # NatsPubSub.subscribe maps and retries its errors
        self._puller = asyncio.create_task(self._pull_loop(), name=f"nats-pull-{self._topic}")
        self._flusher = asyncio.create_task(self._settle_loop(), name=f"nats-acks-{self._topic}")

    def _restart_pulling(self) -> None:
        """After a reconnect: the server forgot our pull requests, so issue new ones."""
        self._forget_requests()
        self._pull_wanted.set()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): nothing is settled,
        nothing said to the server; ``ack_wait`` redelivers what it held."""
        self._closed = True
        self._wake_all()
        self._limit.close()
        await self._stop_tasks()
        self._unsettled.clear()
        self._late.clear()
        self._settlements.clear()
        self._buffer.clear()
        self._owner._forget(self)

    async def _create_consumer(self) -> None:
        cfg = self._owner.config
        js = self._owner._js
        common: dict[str, Any] = {
            "ack_policy": api.AckPolicy.EXPLICIT,
            "ack_wait": cfg.ack_wait,
            "max_deliver": -1 if cfg.max_deliver is None else cfg.max_deliver,
            "max_ack_pending": -1 if cfg.max_unsettled is None else cfg.max_unsettled,
            "filter_subject": self._subject,
        }
        if self._group is not None:
            assert self._consumer is not None
            config = api.ConsumerConfig(
                durable_name=self._consumer,
                deliver_policy=api.DeliverPolicy.ALL,
                description=f"eventmill group {self._group}",
                **common,
            )
            try:
                await js.add_consumer(self._stream, config=config)
            except nats.js.errors.APIError as exc:
                if isinstance(exc, nats.js.errors.ServiceUnavailableError):
                    raise
                # Exists with other settings (another version of the app): reuse it,
                # unless it is a push consumer, which cannot serve pull requests.
                try:
                    info = await js.consumer_info(self._stream, self._consumer)
                except nats.js.errors.NotFoundError:
                    raise exc from None
                if info.config.deliver_subject:
                    raise SubscribeError(
                        f"nats: consumer {self._consumer!r} of stream {self._stream!r} is a "
                        "push consumer; use another group name"
                    ) from exc
        else:
            seen = _stream_seq(self._last_reply) if self._last_reply else None
            if seen is not None:
                self._next_seq = seen + 1
            if self._next_seq is None:
                policy: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.NEW}
            else:  # re-created after the server lost it: continue where we were
                policy = {
                    "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                    "opt_start_seq": self._next_seq,
                }
            config = api.ConsumerConfig(
                inactive_threshold=cfg.inactive_threshold,
                mem_storage=True,
                **policy,
                **common,
            )
            info = await js.add_consumer(self._stream, config=config)
            self._consumer = info.name
            if self._next_seq is None:
                self._next_seq = info.delivered.stream_seq + 1
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}"
        if self._isub is None:
            nc = self._owner._nc
            self._inbox = nc.new_inbox() + "."
            self._isub = await nc.subscribe(
                self._inbox + "*", cb=self._on_message, pending_msgs_limit=self._batch * 4 + 1000
            )

    async def _stop_tasks(self) -> None:
        for task in (self._flusher, self._puller):
            await stop_task(task)
        self._puller = self._flusher = None

    # -- receiving -----------------------------------------------------------------------

    async def _pull_loop(self) -> None:
        cfg = self._owner.config
        loop = asyncio.get_running_loop()
        expires_ns = int(cfg.fetch_timeout * 1_000_000_000)
        request = json.dumps({"batch": self._half, "expires": expires_ns}).encode()
        publish = self._owner._nc.publish
        wanted = self._pull_wanted
        requests = self._requests
        backoff, throttle = self._owner._backoff(), self._owner._backoff()
        while not self._closed:
            now = loop.time()
            if self._broken:
                self._forget_requests()
                await backoff.sleep()
                try:
                    if not await self._consumer_exists():
                        await self._create_consumer()
                except Exception as exc:
                    log.warning(
                        "nats: consumer of topic %r unavailable (%s); retrying",
                        self._topic,
                        type(exc).__name__,
                    )
                    continue
                self._broken = False
                continue
            if self._throttled:
                await throttle.sleep()
                self._throttled = False
                continue
            if self._buffer:
                throttle.reset()  # messages flow again
            for subject, req in list(requests.items()):
                if req[1] + _SILENCE < now:
                    # The server did not even end it (408): after a restart it may have
                    # lost the consumer (an ephemeral one) without saying so.
                    self._end_request(subject)
                    self._broken = True
            try:
                while self._batch - len(self._buffer) - self._owed >= self._half:
                    subject = self._inbox + str(next(self._tokens))
                    requests[subject] = [self._half, now + cfg.fetch_timeout, _NEVER]
                    self._owed += self._half
                    await publish(self._next_subject, request, reply=subject)
                    backoff.reset()
            except Exception as exc:  # disconnected and nats-py's buffer is full
                log.debug("nats: pull request failed: %s", type(exc).__name__)
                self._forget_requests()
                await backoff.sleep()
                continue
            wanted.clear()
            wait = min((r[1] for r in requests.values()), default=now + 1.0) + _SILENCE
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait - now, 0.01)):
                    await wanted.wait()

    def _end_request(self, subject: str) -> None:
        req = self._requests.pop(subject, None)
        if req is not None:
            self._owed -= int(req[0])

    def _forget_requests(self) -> None:
        self._requests.clear()
        self._owed = 0

    async def _consumer_exists(self) -> bool:
        if self._consumer is None:
            return False
        try:
            await self._owner._js.consumer_info(self._stream, self._consumer)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def _on_message(self, m: Any) -> None:
        headers = m.headers
        if headers is not None:
            status = headers.get("Status")
            if status is not None:
                self._on_status(m.subject, status, headers.get("Description", ""))
                return
        requests = self._requests
        if requests:
            # A delivery carries the stream's subject, not the request's: the server
            # serves waiting requests oldest first, so it counts against the oldest.
            oldest = next(iter(requests))
            req = requests[oldest]
            if req[2] == _NEVER:
                req[2] = asyncio.get_running_loop().time()
            req[0] -= 1
            self._owed -= 1
            if req[0] <= 0:
                del requests[oldest]
        reply = m.reply
        if self._closed:
            # Nacked by close() with the others (not at once: see the module docstring).
            if self._group is not None and reply:
                self._late.append(reply)
            return
        mid, metadata = decode(m, self._stream)
        msg = Message._received(mid, metadata, m.data, self._settle)
        self._unsettled[msg] = reply
        self._buffer.append(msg)
        if self._group is None:
            self._last_reply = reply
        if self._readers:
            self._readers.wake()

    def _on_status(self, subject: str, status: str, description: str) -> None:
        if status == "100":  # idle heartbeat
            return
        self._end_request(subject)
        if status in ("408", "404"):  # request expired / nothing to fetch
            pass
        elif status == "409" and "Server Shutdown" in description:
            # The server is going away: the bus logs that once; pull again after a pause.
            log.debug("nats: pull on topic %r: %s %s", self._topic, status, description)
            self._throttled = True
        elif status == "409" and "Consumer Deleted" not in description:
            # Max waiting exceeded, leadership change, a push consumer of that name...:
            # pull again, but after a (growing) pause, so a lasting refusal is no hot loop.
            if not self._throttled:
                log.warning(
                    "nats: pull on topic %r refused: %s %s", self._topic, status, description
                )
            self._throttled = True
        else:  # 503 no responders (consumer or JetStream gone), 409 consumer deleted
            log.debug("nats: pull on topic %r got status %s %s", self._topic, status, description)
            self._broken = True
        self._pull_wanted.set()

    def _wake_all(self) -> None:
        self._readers.wake_all()
        self._pull_wanted.set()

    # -- settling ------------------------------------------------------------------------

    def _settle(self, msg: Message, ok: bool) -> bool:
        reply = self._unsettled.pop(msg, None)
        if reply is None or self._closed:
            return False
        self._limit.done()
        if ok:
            payload = _ACK
        elif msg in self._terminate:
            payload = _TERM
        else:
            payload = self._nak
            self._nak_queued = True
        self._settlements.append((reply, payload))
        self._settle_wanted.set()
        return True

    async def _settle_loop(self) -> None:
        wanted = self._settle_wanted
        backoff = self._owner._backoff()
        timeout = self._owner.config.publish_timeout
        while True:
            if self._sent != self._confirmed:
                # Confirm what was sent (a flush: PING, wait for the PONG) once the
                # settlements pause, not after every batch while acks keep coming: a
                # round trip per message would halve a one-at-a-time consumer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_CONFIRM_AFTER):
                        await wanted.wait()
            else:
                await wanted.wait()
            try:
                if wanted.is_set():
                    wanted.clear()
                    await self._send_settlements()
                else:  # a pause: know that what was sent reached the server
                    sent = self._sent
                    await _flush(self._owner._nc, timeout)
                    self._confirmed = sent
            except Exception as exc:  # nats-py buffers while reconnecting; this is rarer
                log.debug("nats: sending acks failed (%s); retrying", type(exc).__name__)
                await backoff.sleep()
                wanted.set()
            else:
                backoff.reset()

    async def _send_settlements(self) -> None:
        pending = self._settlements
        if not pending:
            return
        self._settlements = []
        self._sent += 1
        if self._nak_queued:
            self._nak_queued = False
            self._nak_due = time.monotonic() + self._nak_delay
        publish = self._owner._nc.publish
        for i, (reply, payload) in enumerate(pending):
            try:
                await publish(reply, payload)
            except Exception:
                self._settlements[:0] = pending[i:]  # keep the rest for the next attempt
                raise
