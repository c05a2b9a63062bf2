"""nats://: the PubSub class (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.js import api

from eventmill.errors import (
    BackendUnavailableError,
    ConfigurationError,
    PublishError,
    SubscribeError,
)
from eventmill.message import Message
from eventmill.pubsub._backoff import Backoff
from eventmill.pubsub._errors import closed, describe
from eventmill.pubsub._outage import Outage
from eventmill.pubsub._subscription import AsyncStartCloseable, InFlight
from eventmill.pubsub.base import Capabilities, check_messages, validate_name
from eventmill.pubsub.nats._config import NatsConfig, consumer_name, stream_name
from eventmill.pubsub.nats._errors import (
    TRANSIENT,
    AckTimeoutError,
    PublishRejectedError,
    mapped,
    translate,
)
from eventmill.pubsub.nats._subscription import (
    ID_HEADER,
    ID_JSON_HEADER,
    METADATA_HEADER,
    MSG_ID_HEADER,
    NatsSubscription,
)

__all__ = ["NatsConfig", "NatsPubSub", "NatsSubscription"]

log = logging.getLogger("eventmill.pubsub.nats")
#: nats-py's own lines: the errors, disconnects and reconnects it reports through the
#: callbacks eventmill gives it (it logs nothing else). Silence them with
#: ``logging.getLogger("eventmill.pubsub.nats.client").setLevel(logging.CRITICAL)``.
client_log = logging.getLogger("eventmill.pubsub.nats.client")

_HEADER_SAFE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
_STREAM_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065


class NatsPubSub(AsyncStartCloseable):
    """Publisher and subscriber on NATS JetStream. See the module docstring."""

    def __init__(self, config: NatsConfig | None = None) -> None:
        self.config = config or NatsConfig()
        self._nc: Any = None
        self._js: Any = None
        self._streams: dict[str, str] = {}  # topic -> stream name (ensured)
        self._stream_locks: dict[str, asyncio.Lock] = {}
        self._subs: set[NatsSubscription] = set()
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._publishing = InFlight()
        # own async-publish machinery: reply inbox, futures by token, bounded in-flight count
        self._reply_prefix = ""
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._expiring: deque[tuple[float, list[str]]] = deque([(0.0, [])])
        self._sweeper: asyncio.Task[None] | None = None
        self._tokens = itertools.count()
        self._slots = asyncio.Semaphore(self.config.max_pending)
        self._auth_failed = False
        self._outage = Outage(log, "nats://", ", ".join(self.config.servers))

    @classmethod
    def from_url(cls, url: str) -> NatsPubSub:
        """Build from ``nats://...`` (see :class:`NatsConfig`); no I/O."""
        return cls(NatsConfig.from_url(url))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            persistent=self.config.storage == "file",
            consumer_groups=True,
            ordering="global",
            redelivers_after_crash=True,
            replay=True,
            has_server=True,
        )

    # -- connection ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the server (idempotent); raise BackendUnavailableError if it cannot."""
        if self._closed:
            raise closed("nats://")
        if self._nc is not None:
            return
        async with self._start_lock:
            if self._nc is not None:
                return
            await self._connect()

    async def _connect(self) -> None:
        cfg = self.config
        nc = NATSClient()
        servers = ", ".join(cfg.servers)
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=list(cfg.servers),
                    user=cfg.user,
                    password=cfg.password,
                    token=cfg.token,
                    name=cfg.name,
                    connect_timeout=max(1, round(cfg.connect_timeout)),
                    reconnect_time_wait=cfg.reconnect_min_delay,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    reconnect_to_server_handler=self._pick_server,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    skip_subject_validation=True,
                ),
                cfg.connect_timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            hint = " (authorization failed: check the credentials)" if self._auth_failed else ""
            raise BackendUnavailableError(
                f"nats: cannot connect to {servers} within {cfg.connect_timeout}s{hint}"
            ) from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=cfg.publish_timeout)
        self._reply_prefix = nc.new_inbox() + "."
        await nc.subscribe(self._reply_prefix + "*", cb=self._on_pub_ack)
        self._sweeper = asyncio.create_task(self._expire_acks(), name="nats-puback-timeouts")

    def _pick_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        # The least-failed server, after the backoff its failures call for.
        server = min(servers, key=lambda s: s.reconnects)
        return server, self._backoff().delay(server.reconnects)

    def _forget(self, sub: NatsSubscription) -> None:
        self._subs.discard(sub)

    def _backoff(self) -> Backoff:
        """The delays between reconnects, re-sends and retries of this bus."""
        return Backoff(self.config.reconnect_max_delay, self.config.reconnect_min_delay)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.AuthorizationError):
            self._auth_failed = True
        # Each failed reconnect attempt is one: while the bus has said the server is
        # away, they are details (INFO); otherwise they may be news (WARNING).
        level = logging.INFO if self._outage.down else logging.WARNING
        client_log.log(level, "nats-py: %s", describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closed:
            client_log.info("nats-py: disconnected; reconnecting")
            self._outage.lost("connection", "disconnected")

    async def _on_reconnected(self) -> None:
        client_log.info("nats-py: reconnected")
        self._outage.ok()
        for sub in list(self._subs):
            sub._restart_pulling()

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, *messages: Message) -> None:
        if self._closed:
            raise closed("nats://")
        stream = self._streams.get(topic)
        if stream is None:
            validate_name("topic", topic)
        check_messages(messages)
        if not messages:
            return
        with self._publishing:
            if self._nc is None:
                await self.start()
            await self._publish(topic, messages)

    def _headers(self, m: Message) -> dict[str, str]:
        mid = m.id
        if _HEADER_SAFE.fullmatch(mid) is not None:
            headers = {MSG_ID_HEADER if self.config.dedupe else ID_HEADER: mid}
        else:  # an id with spaces at its ends, control or non-ASCII characters
            headers = {ID_JSON_HEADER: json.dumps(mid)}
            if self.config.dedupe:
                headers[MSG_ID_HEADER] = hashlib.sha256(mid.encode()).hexdigest()
        if m.metadata:
            headers[METADATA_HEADER] = json.dumps(m.metadata, separators=(",", ":"))
        return headers

    async def _publish(self, topic: str, messages: Sequence[Message]) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.publish_deadline
        subject = cfg.subject_prefix + topic
        todo = list(messages)
        backoff: Backoff | None = None  # made on the first re-send: most publishes need none
        last: BaseException | None = None
        while True:
            if self._closed and self._nc is None:
                raise closed("nats://")
            futures: list[asyncio.Future[None]] = []
            try:
                with mapped(f"publish to {topic!r} failed", PublishError):
                    if topic not in self._streams:
                        await self._ensure_stream(topic)
                    for m in todo:
                        futures.append(await self._send(subject, m))
            except TRANSIENT as exc:
                last = exc
            if futures:
                # Each future ends: PubAck, error, or AckTimeoutError from the sweeper.
                if len(futures) == 1:
                    with contextlib.suppress(Exception):
                        await futures[0]
                else:
                    await asyncio.gather(*futures, return_exceptions=True)
                failed: list[Message] = []
                for m, fut in zip(todo, futures, strict=False):
                    err = fut.exception()
                    if err is None:
                        continue
                    if isinstance(err, PublishRejectedError):
                        raise translate(err, f"publish to {topic!r} failed", PublishError) from err
                    if isinstance(err, nats.js.errors.NoStreamResponseError):
                        self._streams.pop(topic, None)  # the stream may be gone: re-create
                    last = err
                    failed.append(m)
                todo = failed + todo[len(futures) :]
            if not todo:
                return
            if loop.time() >= deadline:
                reason = describe(last) if last is not None else "timed out"
                raise PublishError(
                    f"nats: publish to {topic!r} not acknowledged within "
                    f"{cfg.publish_deadline}s ({reason})"
                ) from last
            log.debug("nats: re-sending %d message(s) to %r: %s", len(todo), topic, last)
            if backoff is None:
                backoff = self._backoff()
            await asyncio.sleep(min(backoff.next(), max(0.0, deadline - loop.time())))

    async def _send(self, subject: str, m: Message) -> asyncio.Future[None]:
        """Send one message; return the future of its PubAck (bounded by ``max_pending``)."""
        nc = self._nc
        if len(m.payload) > nc.max_payload:
            raise PublishRejectedError(
                f"payload of {len(m.payload)} bytes exceeds the server's max_payload "
                f"({nc.max_payload})"
            )
        await self._slots.acquire()
        token = str(next(self._tokens))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[token] = fut
        self._expiring[-1][1].append(token)
        try:
            await nc.publish(
                subject, m.payload, reply=self._reply_prefix + token, headers=self._headers(m)
            )
        except BaseException:
            if self._acks.pop(token, None) is not None:
                self._slots.release()
            raise
        return fut

    async def _expire_acks(self) -> None:
        """Fail the PubAck futures older than ``publish_timeout`` (one timer for all).

        Tokens are kept in time slots of a fifth of the timeout; a slot is swept
        once its deadline passed, so a future times out after 1-1.2 timeouts.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.publish_timeout
        slot = timeout / 5
        expiring = self._expiring
        while True:
            await asyncio.sleep(slot)
            now = loop.time()
            expiring.append((now + timeout, []))
            while expiring[0][0] <= now:
                _, tokens = expiring.popleft()
                for token in tokens:
                    fut = self._acks.pop(token, None)
                    if fut is not None:
                        self._slots.release()
                        if not fut.done():
                            fut.set_exception(AckTimeoutError("no PubAck within publish_timeout"))

    async def _on_pub_ack(self, msg: Any) -> None:
        fut = self._acks.pop(msg.subject[len(self._reply_prefix) :], None)
        if fut is None:
            return
        self._slots.release()
        if fut.done():
            return
        data: bytes = msg.data
        if not data:
            headers = msg.headers or {}
            if headers.get("Status") == "503":
                fut.set_exception(nats.js.errors.NoStreamResponseError())
            else:
                fut.set_exception(
                    PublishRejectedError(f"unexpected reply status {headers.get('Status')}")
                )
            return
        if b'"error"' in data:
            try:
                err = json.loads(data)["error"]
                exc: BaseException = nats.js.errors.APIError.from_error(err)
            except Exception:  # malformed reply
                exc = PublishRejectedError("malformed PubAck")
            if not isinstance(
                exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.ServerError
            ):
                exc = PublishRejectedError(describe(exc))
            fut.set_exception(exc)
            return
        fut.set_result(None)

    async def _ensure_stream(self, topic: str) -> str:
        lock = self._stream_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            name = self._streams.get(topic)
            if name is not None:
                return name
            cfg = self.config
            subject = cfg.subject_prefix + topic
            name = stream_name(cfg.stream_prefix, topic)
            config = api.StreamConfig(
                name=name,
                description=f"eventmill topic {topic}",
                subjects=[subject],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE if cfg.storage == "file" else api.StorageType.MEMORY,
                num_replicas=cfg.replicas,
                max_age=cfg.max_age,
                max_msgs=-1 if cfg.max_msgs is None else cfg.max_msgs,
                max_bytes=-1 if cfg.max_bytes is None else cfg.max_bytes,
                discard=api.DiscardPolicy.OLD,
                duplicate_window=cfg.duplicate_window,
            )
            try:
                await self._js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == _STREAM_NAME_IN_USE:
                    info = await self._js.stream_info(name)
                    if subject not in (info.config.subjects or []):
                        raise ConfigurationError(
                            f"nats: stream {name!r} exists but does not capture subject "
                            f"{subject!r}; choose another stream_prefix"
                        ) from exc
                elif exc.err_code == _SUBJECTS_OVERLAP:
                    name = await self._js.find_stream_name_by_subject(subject)
                else:
                    raise
            self._streams[topic] = name
            return name

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, *, group: str | None = None) -> NatsSubscription:
        if self._closed:
            raise closed("nats://")
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if self._nc is None:
            await self.start()
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.publish_deadline
        backoff = self._backoff()
        while True:
            try:
                with mapped(f"cannot subscribe to {topic!r}", SubscribeError):
                    stream = self._streams.get(topic) or await self._ensure_stream(topic)
                    sub = NatsSubscription(
                        self,
                        topic,
                        group,
                        stream,
                        consumer_name(group) if group is not None else None,
                        cfg.subject_prefix + topic,
                    )
                    await sub._start()
            except TRANSIENT as exc:
                if loop.time() >= deadline:
                    raise SubscribeError(
                        f"nats: cannot subscribe to {topic!r}: {describe(exc)}"
                    ) from exc
            else:
                self._subs.add(sub)
                return sub
            await backoff.sleep()

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for publishes in progress, close every subscription, then disconnect."""
        if self._closed:
            return
        self._closed = True
        await self._publishing.idle()
        for sub in list(self._subs):
            await sub.close()
        self._stop_sweeper()
        nc, self._nc = self._nc, None
        if nc is not None:
            # Publishes got their PubAcks, subscriptions flushed their settlements; what
            # nats-py still buffers (goodbyes nobody waits for) it writes before closing.
            with contextlib.suppress(Exception):
                await nc.close()

    async def abort(self) -> None:
        """The crash hook (:class:`~eventmill.pubsub.base.Abortable`): the connection
        drops, nothing is settled or flushed; the consumers' ``ack_wait`` then
        redelivers what was held."""
        self._closed = True
        for sub in list(self._subs):
            await sub.abort()
        self._stop_sweeper()
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                nc._pending = []  # what a killed process had not written is lost
                nc._pending_data_size = 0
                if nc._transport is not None:
                    nc._transport.close()
                await nc.close()

    def _stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(nats.errors.ConnectionClosedError())
        self._acks.clear()
