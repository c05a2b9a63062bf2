"""The Router: named handlers that consume a topic and optionally publish what they return.

Lifecycle::

    router = Router(subscriber=bus, publisher=bus)
    router.add_middleware(CorrelationID(), PoisonQueue(bus), Retry())
    router.add_handler("orders", "orders", handle_order, group="billing", publish_topic="invoices")
    task = asyncio.create_task(router.run())
    await router.running()            # every subscription is open
    ...
    await router.close()              # graceful: in-flight handlers finish, their acks land

Per message, a handler's worker pulls the next message from the handler's single
subscription, calls the composed handler (router-level middleware outermost, then
handler-level middleware, then the handler), publishes what it returned to
``publish_topic`` and acks; if the handler raised, or its results could not be
published, it nacks (the backend delivers the message again) and logs one warning
line (add :class:`~eventmill.router.middleware.Recoverer` for full tracebacks). A
worker whose messages fail in a row pauses after each from the second on (50 ms,
doubling to 2 s; a success resets it): a message that fails on every redelivery, with
no Retry or PoisonQueue to end it, neither pins a CPU nor floods the log. A handler
raising ``CancelledError`` itself fails like any other (only the router's own
cancellation, on close, ends a worker). When the results cannot be published, each
middleware with an ``abandoned(msg)`` coroutine method is told first (Deduplicator
forgets the message's key, so its redelivery is processed).

Concurrency: a handler with ``concurrency=N`` runs N worker coroutines pulling from
the same subscription (no task is created per message), so at most N of its
messages are in flight. The default, 1, processes messages one at a time in the
order the backend delivers them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from eventmill.errors import ConfigurationError, RouterError
from eventmill.message import Message
from eventmill.pubsub.base import Publisher, Subscriber, Subscription, validate_name
from eventmill.router.handler import Handler, HandlerInfo, HandlerResult, Middleware, _current

__all__ = ["Router", "RouterConfig"]

_log = logging.getLogger("eventmill.router")

_NEW: Final = 0
_STARTING: Final = 1
_RUNNING: Final = 2
_CLOSED: Final = 3

_YIELD_EVERY: Final = 256
"""A worker yields to the event loop after this many messages that arrived without
waiting, so a full buffer cannot starve other tasks (close, signals, publishers)."""
_PAUSES: Final = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0)
"""A worker whose messages fail in a row pauses after each from the second on: 50 ms,
doubling, at most 2 s (a success resets it), so a message failing on every
redelivery, without Retry or PoisonQueue, neither pins a CPU nor floods the log."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Settings of :class:`Router`."""

    close_timeout: float = 30.0
    """Seconds :meth:`Router.close` (and a signal) waits for in-flight handlers to
    finish before cancelling them; a cancelled handler's message is nacked and so
    redelivered (default 30)."""

    def __post_init__(self) -> None:
        if self.close_timeout < 0:
            raise ConfigurationError("RouterConfig.close_timeout must be >= 0")


class _Worker:
    __slots__ = ("failures", "msg", "task")

    def __init__(self) -> None:
        self.msg: Message | None = None
        self.task: asyncio.Task[None] | None = None
        self.failures = 0
        """Messages failed in a row (a success resets it)."""


class _Entry:
    __slots__ = ("call", "concurrency", "handler", "info", "middleware", "sub", "workers")

    def __init__(
        self, info: HandlerInfo, handler: Handler, concurrency: int, middleware: list[Middleware]
    ) -> None:
        self.info = info
        self.handler = handler
        self.concurrency = concurrency
        self.middleware = middleware
        self.call: Handler = handler
        self.sub: Subscription | None = None
        self.workers: list[_Worker] = []


class Router:
    """Runs named handlers; see the module docstring for the message flow.

    ``subscriber`` opens each handler's subscription; ``publisher`` publishes what
    handlers return (required only for handlers with a ``publish_topic``). The
    router does not close either of them: they belong to the caller.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        publisher: Publisher | None = None,
        config: RouterConfig | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self._subscriber = subscriber
        self._publisher = publisher
        self._middleware: list[Middleware] = []
        self._entries: dict[str, _Entry] = {}
        self._state = _NEW
        self._stopping = False
        self._stop: asyncio.Future[None] | None = None
        self._close_timeout = self.config.close_timeout
        self._active = 0
        self._error: BaseException | None = None
        self._start_error: BaseException | None = None
        self._ran = False
        self._started = asyncio.Event()
        self._closed = asyncio.Event()

    # -- configuration ----------------------------------------------------------------

    def add_middleware(self, *middleware: Middleware) -> None:
        """Add router-level middleware, applied to every handler, outermost first.

        Router-level middleware wraps handler-level middleware. Call before :meth:`run`.
        """
        self._check_configurable()
        for m in middleware:
            if not callable(m):
                raise TypeError(f"middleware must be callable, not {type(m).__name__}")
        self._middleware.extend(middleware)

    def add_handler(
        self,
        name: str,
        topic: str,
        handler: Handler,
        *,
        group: str | None = None,
        publish_topic: str | None = None,
        concurrency: int = 1,
        middleware: Sequence[Middleware] = (),
    ) -> HandlerInfo:
        """Register ``handler`` under the unique ``name`` to consume ``topic``.

        ``group`` joins that consumer group (``None``: an ephemeral fan-out
        subscription that sees messages published while the router runs).
        ``publish_topic`` receives the messages the handler returns.
        ``concurrency`` is the number of messages processed at once (default 1,
        which keeps the delivery order). ``middleware`` wraps this handler only,
        inside the router-level middleware, outermost first.

        Raises :class:`~eventmill.RouterError` for a duplicate name, a bad
        concurrency, a ``publish_topic`` without a publisher, or when the router
        already runs; :class:`~eventmill.InvalidNameError` for a bad topic or group.
        """
        self._check_configurable()
        if not isinstance(name, str) or not name:
            raise RouterError("handler name must be a non-empty str")
        if name in self._entries:
            raise RouterError(f"duplicate handler name {name!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if not inspect.iscoroutinefunction(handler) and not inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004
        ):
            # a sync one would fail on every message, each redelivered without end
            raise RouterError(
                f"handler {name!r} must be an async function (or have an async __call__); "
                "wrap a sync one: async def handle(msg): return sync_handle(msg)"
            )
        validate_name("topic", topic)
        if group is not None:
            validate_name("group", group)
        if publish_topic is not None:
            validate_name("topic", publish_topic)
            if self._publisher is None:
                raise RouterError(
                    f"handler {name!r} has a publish_topic but the router has no publisher"
                )
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise RouterError(f"handler {name!r}: concurrency must be an int >= 1")
        for m in middleware:
            if not callable(m):
                raise TypeError(f"middleware must be callable, not {type(m).__name__}")
        info = HandlerInfo(name=name, topic=topic, group=group, publish_topic=publish_topic)
        self._entries[name] = _Entry(info, handler, concurrency, list(middleware))
        return info

    @property
    def handlers(self) -> tuple[HandlerInfo, ...]:
        """The handlers added so far, in the order they were added."""
        return tuple(e.info for e in self._entries.values())

    @property
    def is_running(self) -> bool:
        """Whether every subscription is open and the workers are running."""
        return self._state == _RUNNING

    def _check_configurable(self) -> None:
        if self._state != _NEW:
            raise RouterError("the router was already started; add handlers before run()")

    # -- running ----------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> None:
        """Open every handler's subscription, process messages until closed.

        Returns after :meth:`close` (or, with ``handle_signals=True``, SIGINT or
        SIGTERM) finished a graceful shutdown, or once every subscription ended (the
        subscriber was closed; a router without handlers runs until closed). A second
        signal during shutdown cancels the in-flight handlers at once (their messages
        are nacked). If a subscription fails, the router shuts down and ``run`` raises
        that error. If ``run`` itself is cancelled, in-flight handlers are cancelled
        and their messages nacked.
        Raises :class:`~eventmill.RouterError` if called twice or after close.
        """
        if self._state != _NEW:
            raise RouterError("Router.run() may be called once, and not after close()")
        self._state = _STARTING
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        installed: list[signal.Signals] = []
        try:
            try:
                if handle_signals:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        try:
                            loop.add_signal_handler(sig, self._on_signal, sig)
                        except (NotImplementedError, RuntimeError, ValueError) as exc:
                            raise RouterError(
                                "cannot install signal handlers (not the main thread?)"
                            ) from exc
                        installed.append(sig)
                for entry in self._entries.values():
                    call = entry.handler
                    for m in reversed([*self._middleware, *entry.middleware]):
                        call = m(call)
                    entry.call = call
                    info = entry.info
                    entry.sub = await self._subscriber.subscribe(info.topic, group=info.group)
            except BaseException as exc:
                self._start_error = exc
                raise
            if not self._stop.done():
                for entry in self._entries.values():
                    for _ in range(entry.concurrency):
                        self._spawn(entry)
                self._state = _RUNNING
                self._ran = True
                _log.debug("router running %d handler(s)", len(self._entries))
            self._started.set()
            await self._stop
        except BaseException:
            self._close_timeout = 0.0
            raise
        finally:
            try:
                await self._shutdown()
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)
        if self._error is not None:
            raise self._error

    async def running(self) -> None:
        """Wait until :meth:`run` has opened every subscription and started the workers.

        Raises :class:`~eventmill.RouterError` if the router failed to start or was
        closed before it ran.
        """
        await self._started.wait()
        if self._start_error is not None:
            raise RouterError("the router failed to start") from self._start_error
        if not self._ran:
            raise RouterError("the router was closed before it ran")

    async def close(self, timeout: float | None = None) -> None:
        """Stop gracefully and wait until the router has shut down.

        The router stops pulling messages, waits up to ``timeout`` seconds (default
        ``config.close_timeout``) for in-flight handlers to finish and settle their
        messages, cancels those still running (their messages are nacked and so
        redelivered), then closes the subscriptions, which flushes the settlements.
        Idempotent; safe before :meth:`run` (run then raises). Do not await it from
        inside a handler of this router: it would wait for that handler itself.
        """
        if self._state == _NEW:
            self._state = _CLOSED
            self._closed.set()
            self._started.set()
            return
        self._request_stop(timeout)
        await self._closed.wait()

    # -- internals --------------------------------------------------------------------

    def _request_stop(self, timeout: float | None) -> None:
        self._stopping = True
        stop = self._stop
        if stop is not None and not stop.done():
            if timeout is not None:
                self._close_timeout = timeout
            stop.set_result(None)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop is not None and self._stop.done():
            _log.warning("%s again: cancelling in-flight handlers", sig.name)
            for entry in self._entries.values():
                for w in entry.workers:
                    if w.task is not None:
                        w.task.cancel()
            return
        _log.info("%s received: closing the router gracefully", sig.name)
        self._request_stop(None)

    def _spawn(self, entry: _Entry) -> None:
        w = _Worker()
        w.task = asyncio.get_running_loop().create_task(
            self._work(entry, w), name=f"eventmill-router:{entry.info.name}"
        )
        entry.workers.append(w)
        self._active += 1
        w.task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        self._active -= 1
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                if self._error is None:
                    self._error = exc
                _log.error("router worker %s failed: %r", task.get_name(), exc)
                self._request_stop(None)
                return
        if self._active == 0:
            self._request_stop(None)

    async def _work(self, entry: _Entry, w: _Worker) -> None:
        _current.set(entry.info)
        sub = entry.sub
        assert sub is not None
        anext = sub.__anext__
        call = entry.call
        produce = self._produce
        n = 0
        while not self._stopping:
            try:
                msg = await anext()
            except StopAsyncIteration:
                return
            w.msg = msg
            failed: BaseException | None = None
            try:
                result = await call(msg)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    msg.nack()  # cancelled (close timeout): the message goes back
                    raise
                failed = exc  # the handler's own CancelledError: a failure like any
            except Exception as exc:
                failed = exc
            except BaseException:
                msg.nack()  # (SystemExit, KeyboardInterrupt): the message goes back
                raise
            else:
                if result is not None:
                    try:
                        await produce(entry.info, msg, result)
                    except Exception as exc:
                        failed = exc
                        await self._abandoned(entry, msg)
                    except BaseException:
                        msg.nack()
                        raise
            if failed is None:
                msg.ack()
                w.failures = 0
            else:
                msg.nack()
                _log.warning(
                    "handler %r failed on message %s (nacked): %s: %s",
                    entry.info.name,
                    msg.id,
                    type(failed).__name__,
                    failed,
                )
                w.failures += 1
                if w.failures > 1:  # failing again and again: pause, growing
                    w.msg = None
                    await asyncio.sleep(_PAUSES[min(w.failures - 2, len(_PAUSES) - 1)])
            w.msg = None
            n += 1
            if n == _YIELD_EVERY:
                n = 0
                await asyncio.sleep(0)

    async def _abandoned(self, entry: _Entry, msg: Message) -> None:
        """The handler succeeded but its results could not be published: tell the
        middleware that keeps state per message (``abandoned(msg)``, e.g.
        :class:`~eventmill.router.middleware.Deduplicator` forgets the key), before the
        message is nacked and comes back."""
        for m in (*self._middleware, *entry.middleware):
            hook = getattr(m, "abandoned", None)
            if hook is None:
                continue
            try:
                await hook(msg)
            except Exception as exc:
                _log.warning("middleware %r failed on an abandoned message: %r", m, exc)

    async def _produce(self, info: HandlerInfo, msg: Message, result: HandlerResult) -> None:
        if isinstance(result, Message):
            out: tuple[Message, ...] = (result,)
        else:
            out = tuple(result)  # type: ignore[arg-type]
            if not out:
                return
            for m in out:
                if not isinstance(m, Message):
                    raise RouterError(
                        f"handler {info.name!r} returned {type(m).__name__}, not Message"
                    )
        if msg.nacked:
            return  # a middleware gave the message back; its results are void
        if info.publish_topic is None or self._publisher is None:
            raise RouterError(f"handler {info.name!r} returned messages but has no publish_topic")
        await self._publisher.publish(info.publish_topic, *out)

    async def _shutdown(self) -> None:
        self._stopping = True
        workers = [w for e in self._entries.values() for w in e.workers]
        for w in workers:
            if w.msg is None and w.task is not None:
                w.task.cancel()  # idle: waiting for a message, holding none
        pending = {w.task for w in workers if w.task is not None and not w.task.done()}
        if pending:
            timeout = self._close_timeout
            if timeout > 0:
                _, pending = await asyncio.wait(pending, timeout=timeout)
            if pending:
                _log.warning("close timeout: cancelling %d in-flight handler(s)", len(pending))
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending)
        for entry in self._entries.values():
            sub, entry.sub = entry.sub, None
            if sub is not None:
                try:
                    await sub.close()
                except Exception as exc:
                    _log.warning(
                        "closing the subscription of handler %r failed: %r", entry.info.name, exc
                    )
        self._state = _CLOSED
        self._started.set()
        self._closed.set()
        _log.debug("router closed")

    def __repr__(self) -> str:
        state = ("new", "starting", "running", "closed")[self._state]
        return f"<Router {state} handlers={list(self._entries)}>"
