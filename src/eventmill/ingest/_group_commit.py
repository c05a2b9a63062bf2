"""Group commit for the ingest path: many concurrent inserts, one store transaction.

:meth:`GroupCommitInserter.insert` has the contract of
:meth:`eventmill.store.EventStore.insert` and returns only after its own row is
committed. One writer task (:meth:`GroupCommitInserter.run`) takes the requests
waiting (up to ``max_batch``) and stores them with one
:meth:`~eventmill.store.EventStore.insert_many` call, i.e. one transaction: SQLite
commits once per batch instead of once per request. A few batches may be in flight
at once (``max_in_flight``), so one batch's round trip does not hold up the next.
Each caller gets its own item's result, or its :class:`~eventmill.store.errors.DuplicateEventError`
raised; an error of the whole batch (e.g. :class:`~eventmill.store.errors.StoreUnavailableError`)
is raised to every caller in it.

Waiting requests are bounded by ``max_pending``; when full, ``insert`` waits for room
(the request's own timeout then answers 503). A caller that gives up before its batch
is taken is left out of it; one that gives up later may still have its row committed
(a retry is then answered as a duplicate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from eventmill.errors import ConfigurationError
from eventmill.events import Event
from eventmill.store import Store, StoredEvent
from eventmill.store.errors import DuplicateEventError, StoreUnavailableError
from eventmill.store.events import check_external_id

__all__ = ["GroupCommitInserter"]

_Result = tuple[StoredEvent, bool]
_Request = tuple[Event, str | None, "asyncio.Future[_Result]"]


def _fail(requests: Iterable[_Request], exc: BaseException) -> None:
    for _, _, future in requests:
        if not future.done():
            future.set_exception(exc)


class GroupCommitInserter:
    """Coalesces concurrent event inserts into one transaction (see the module docstring).

    ``max_batch`` (default 256) caps the events per transaction; ``max_pending``
    (default 10 000) caps the requests waiting for the writer; ``max_in_flight``
    (default 4) caps the batches being committed at once.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 256,
        max_pending: int = 10_000,
        max_in_flight: int = 4,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_in_flight < 1:
            raise ConfigurationError("max_batch, max_pending and max_in_flight must be at least 1")
        self._events = store.events
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_pending)
        self._closed = False

    @property
    def pending(self) -> int:
        """How many requests wait for the writer (at most ``max_pending``)."""
        return self._queue.qsize()

    async def insert(self, event: Event, external_id: str | None = None) -> _Result:
        """Store ``event`` unless already stored, as ``EventStore.insert``, in a group commit."""
        if self._closed:
            raise StoreUnavailableError("the event store is closing")
        check_external_id(external_id)  # this caller's error, not its batch's
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, external_id, future))
        if self._closed:  # closed while this request waited for room
            self._fail_waiting()
        return await future

    async def run(self) -> None:
        """The writer: commit waiting inserts batch by batch until cancelled.

        Up to ``max_in_flight`` batches are being committed at once: the next batch is
        taken while earlier ones are on their way, so a batch does not wait for the
        previous one's answer to come back. Batches in flight together may commit in
        any order (on PostgreSQL their connections race for the store's lock): of two
        concurrent requests with one dedup key, either may be the one stored; the
        other gets that event back as a duplicate. When all
        slots are busy, requests keep gathering into the next batch. Cancelling
        ``run`` cancels the batches in flight (their callers get StoreUnavailableError).
        """
        slots = asyncio.Semaphore(self._max_in_flight)
        in_flight: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            slots.release()

        try:
            while True:
                await slots.acquire()
                batch = [await self._queue.get()]
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                live = [request for request in batch if not request[2].done()]
                if not live:
                    slots.release()
                    continue
                task = asyncio.create_task(self._commit(live))
                in_flight.add(task)
                task.add_done_callback(finished)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def close(self) -> None:
        """Refuse new inserts and fail those still waiting (they were never committed)."""
        self._closed = True
        self._fail_waiting()

    async def _commit(self, batch: list[_Request]) -> None:
        try:
            results = await self._events.insert_many([(e, x) for e, x, _ in batch])
        except asyncio.CancelledError:
            _fail(batch, StoreUnavailableError("the event store is closing"))
            raise
        except Exception as exc:  # the whole batch failed: every caller gets the error
            _fail(batch, exc)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, DuplicateEventError):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _fail_waiting(self) -> None:
        closing = StoreUnavailableError("the event store is closing")
        while not self._queue.empty():
            _fail([self._queue.get_nowait()], closing)
