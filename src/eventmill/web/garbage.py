"""Short full garbage collections for the service's process.

CPython's full (generation 2) collection walks every container object the process
holds, and nothing else runs meanwhile. A node with 10,000 WebSocket connections holds
about 1.2 million (some 120 a connection: the server's protocol, the ASGI chain's
suspended coroutines, the handshake's headers, the connection's own state), and a full
collection of them took 0.75-0.9 s (2 cores, AMD EPYC, 2026-12-06): every event for
every connection waited that long. CPython starts one whenever the objects promoted to
the oldest generation since the last exceed a quarter of those in it, which ingest at
10,000 connections did every few bursts.

:class:`SurvivorFreezer` keeps a full collection to what is new: when one ends, what
survived it is frozen (``gc.freeze()``), so the next walks only what was promoted
since. With the same 10,000 connections, while bursts of 10,000 events ran through
ingest and the hub, full collections then took 1-250 ms, most under 50. Frozen
objects still go as soon as nothing refers to them; only garbage *cycles* among
them wait. So once the frozen objects outnumber those of the last complete collection
by a quarter (``growth``: CPython's own ratio for full collections), the freezer
unfreezes them and the next full collection walks everything, cycles included, and
freezes what is left again: memory held by such cycles stays bounded the way CPython
bounds it, and a walk of everything comes only as the process grows (or such cycles
pile up), no longer every few seconds under load.

Only for a process the service owns (``eventmill serve``): it changes collection for
the whole process. It also measures every collection's pause for ``/metrics``.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SurvivorFreezer"]

_GROWTH: Final = 0.25
_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SurvivorFreezer:
    """Freezes what survives each full collection; unfreezes once the frozen objects
    grew by ``growth`` since the last complete collection (see the module)."""

    def __init__(self, metrics: CollectorRegistry | None = None, growth: float = _GROWTH) -> None:
        if growth <= 0:
            raise ValueError("growth must be positive")
        self.growth = growth
        self.limit: int | None = None
        """Frozen objects beyond which the next full collection walks everything;
        ``None`` while it is due (set after it)."""
        self.complete = 0
        """Full collections that walked everything (after an unfreeze)."""
        self.frozen = 0
        """Frozen objects as of the last full collection (or :meth:`install`), for
        ``/metrics``: ``gc.get_freeze_count()`` walks every frozen object (~10 ms at
        10,000 connections), so a scrape must not call it; frozen objects freed since
        are still counted."""
        self._installed = False
        self._started = 0.0
        self._longest = [0.0, 0.0, 0.0]
        """The longest pause of each generation's collections so far (seconds)."""
        self._pauses: list[Histogram] = []
        self._longest_gauges: list[Gauge] = []
        self._unfrozen: Counter | None = None
        if metrics is not None:
            pause = Histogram(
                "eventmill_gc_pause_seconds",
                "Garbage collections' pauses (the process runs nothing else meanwhile)",
                ["generation"],
                buckets=_BUCKETS,
                registry=metrics,
            )
            longest = Gauge(
                "eventmill_gc_longest_pause_seconds",
                "The longest garbage collection pause since the process started",
                ["generation"],
                registry=metrics,
            )
            self._pauses = [pause.labels(str(g)) for g in range(3)]
            self._longest_gauges = [longest.labels(str(g)) for g in range(3)]
            self._unfrozen = Counter(
                "eventmill_gc_complete_collections",
                "Full collections that walked every object (frozen ones included)",
                registry=metrics,
            )
            Gauge(
                "eventmill_gc_frozen_objects",
                "Objects that full collections skip (survivors of the last ones), "
                "as of the last full collection",
                registry=metrics,
            ).set_function(lambda: self.frozen)

    def install(self) -> None:
        """Freeze what exists now (the process's modules, the app, open resources) and
        follow every collection from now on."""
        if self._installed:
            return
        gc.collect()  # no garbage among what is frozen
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        self.limit = self._limit_from(self.frozen)
        gc.callbacks.append(self._on_collection)
        self._installed = True

    def uninstall(self) -> None:
        """Stop following collections and unfreeze everything."""
        if not self._installed:
            return
        self._installed = False
        gc.callbacks.remove(self._on_collection)
        gc.unfreeze()
        self.frozen = 0

    def _limit_from(self, frozen: int) -> int:
        return frozen + max(1, int(frozen * self.growth))

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        generation: int = info["generation"]
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        if self._pauses:
            self._pauses[generation].observe(pause)
        if pause > self._longest[generation]:
            self._longest[generation] = pause
            if self._longest_gauges:
                self._longest_gauges[generation].set(pause)
        if generation != 2:
            return
        limit = self.limit
        gc.freeze()
        frozen = self.frozen = gc.get_freeze_count()
        if limit is None:
            # This collection walked everything: what it left is the measure for the
            # next complete one.
            self.complete += 1
            if self._unfrozen is not None:
                self._unfrozen.inc()
            self.limit = self._limit_from(frozen)
        elif frozen > limit:
            # Grown by a quarter since the last complete collection: the next full
            # collection walks everything (garbage cycles among frozen objects too).
            gc.unfreeze()
            self.frozen = 0
            self.limit = None

    def longest_pause(self, generation: int) -> float:
        """The longest pause of ``generation``'s collections so far, in seconds."""
        return self._longest[generation]
