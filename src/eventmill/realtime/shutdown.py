"""Close realtime clients with 1001 before the HTTP server stops.

uvicorn, on SIGTERM or SIGINT, first shuts every connection down itself (WebSocket
close 1012, streaming responses left to finish) and only then runs the application's
lifespan shutdown: too late to say "going away" (1001) or to end SSE streams, which
would hold the graceful shutdown until its timeout. So while the feature runs under
uvicorn's signal handlers, it puts its own in front of them: the first signal closes
every realtime connection (bounded by a grace period), then hands the signal on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, cast

__all__ = ["before_server_exit"]

_log = logging.getLogger("eventmill.realtime")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _is_uvicorn(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return (
        callable(handler)
        and getattr(handler, "__name__", "") == "handle_exit"
        and any(c.__module__.startswith("uvicorn") for c in type(owner).__mro__)
    )


@contextlib.contextmanager
def before_server_exit(close: Callable[[], Awaitable[None]], grace: float) -> Iterator[None]:
    """While entered, run ``close()`` (at most ``grace`` seconds) on the first SIGTERM
    or SIGINT before uvicorn sees it. Does nothing off the main thread or when the
    handlers are not uvicorn's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    wrapped = {sig: h for sig, h in previous.items() if _is_uvicorn(h)}
    fired = False
    pending: set[asyncio.Task[None]] = set()

    def handler(sig: int, frame: FrameType | None) -> None:
        nonlocal fired
        original = cast(Callable[[int, FrameType | None], None], wrapped[signal.Signals(sig)])
        if fired:
            original(sig, frame)
            return
        fired = True

        async def run() -> None:
            try:
                async with asyncio.timeout(grace):
                    await close()
            except TimeoutError:
                _log.warning("realtime clients did not close within %.1f s", grace)
            except Exception:
                _log.exception("closing realtime clients failed")
            finally:
                original(sig, frame)

        def start() -> None:
            task = loop.create_task(run())
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.call_soon_threadsafe(start)

    for sig in wrapped:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, original in wrapped.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, original)
