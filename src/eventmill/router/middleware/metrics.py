"""Metrics: Prometheus counters and histograms of what handlers do.

``HandlerMetrics(registry)`` is two middlewares in one object: the object itself goes
outermost and measures each message (duration from the first attempt to the outcome,
and the outcome), and :attr:`HandlerMetrics.attempts` goes innermost and counts
attempts, so retries are seen without Retry knowing about metrics::

    metrics = HandlerMetrics(registry)
    router.add_middleware(metrics, PoisonQueue(bus), Retry(), metrics.attempts)

Outcomes: ``success`` (the handler returned), ``failed`` (it raised: the router
nacks) and ``poisoned`` (the last attempt raised, but a middleware between the two,
such as PoisonQueue, parked the message and returned). Handler names come from
:func:`~eventmill.router.current_handler` (``"?"`` outside a router).

Series (all labelled ``handler``): ``eventmill_handler_messages_total`` (and
``outcome``), ``eventmill_handler_duration_seconds`` (histogram, and ``outcome``),
``eventmill_handler_retries_total``.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from eventmill.message import Message
from eventmill.router.handler import Handler, HandlerResult, current_handler

__all__ = ["HandlerMetrics"]


@dataclass(slots=True)
class _Attempts:
    count: int = 0
    last_failed: bool = False


_attempts: ContextVar[_Attempts | None] = ContextVar("eventmill_attempts", default=None)


def _name() -> str:
    info = current_handler()
    return info.name if info is not None else "?"


class HandlerMetrics:
    """Handler metrics on ``registry`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "eventmill_handler_messages_total",
            "Messages handled, by handler and outcome (success, failed, poisoned).",
            ["handler", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "eventmill_handler_duration_seconds",
            "Seconds from a message's first attempt to its outcome, retries included.",
            ["handler", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "eventmill_handler_retries_total",
            "Attempts after the first, by handler.",
            ["handler"],
            registry=registry,
        )

        self._series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def _outcome(self, name: str, outcome: str) -> tuple[Counter, Histogram]:
        series = self._series.get((name, outcome))
        if series is None:  # labels() costs more than the count: look them up once
            series = self._series[name, outcome] = (
                self.messages.labels(name, outcome),
                self.duration.labels(name, outcome),
            )
        return series

    def __call__(self, handler: Handler) -> Handler:
        retries, outcome_series = self.retries, self._outcome

        async def measured(msg: Message) -> HandlerResult:
            attempts = _Attempts()
            token = _attempts.set(attempts)
            start = time.perf_counter()
            outcome = "failed"
            try:
                result = await handler(msg)
                outcome = "poisoned" if attempts.last_failed else "success"
                return result
            finally:
                _attempts.reset(token)
                name = _name()
                count, duration = outcome_series(name, outcome)
                count.inc()
                duration.observe(time.perf_counter() - start)
                if attempts.count > 1:
                    retries.labels(name).inc(attempts.count - 1)

        return measured

    def attempts(self, handler: Handler) -> Handler:
        """The inner middleware: counts each attempt and whether the last one failed."""

        async def attempt(msg: Message) -> HandlerResult:
            state = _attempts.get()
            if state is None:
                return await handler(msg)
            state.count += 1
            try:
                result = await handler(msg)
            except BaseException:
                state.last_failed = True
                raise
            state.last_failed = False
            return result

        return attempt
