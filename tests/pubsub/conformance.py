"""The pub/sub conformance suite: one set of tests that every backend runs.

In the spirit of Watermill's ``pubsub/tests``. A backend's test module subclasses
:class:`ConformanceSuite` and provides a ``harness`` fixture returning a
:class:`Harness`; tests that need a capability the backend does not promise are
skipped with the flag named.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest

from eventmill import ClosedError, InvalidNameError, Message, supports_transactions
from eventmill.pubsub.base import Capabilities, PubSub, Subscription

RECEIVE_TIMEOUT = 30.0

#: Seconds within which ``close()`` returns while the consumer is idle in a blocking read
#: with nothing left to send (a contract bound of the API, not a speed figure: such a
#: close makes no round trip to the server; see ``Harness.close_bound``).
CLOSE_BOUND = 0.1

#: Seconds the close tests leave the consumers idle, so each is in its blocking read.
IDLE = 0.5


class Harness:
    """How the suite drives one backend. Subclass per backend.

    ``open()`` returns a new PubSub connected to the same storage or server as the
    others it returned (for memory://, which has no shared storage, the same
    instance); the harness closes them all in ``aclose()``.
    """

    #: How long a message held by a crashed consumer takes to come back, in seconds.
    redelivery_timeout: float = 1.0

    #: Seconds within which an idle group subscription's (and bus's) ``close()`` returns
    #: once its settlements reached the backend: :data:`CLOSE_BOUND`, since such a close
    #: makes no round trip to the server. A backend whose close must wait for the
    #: server's answer (kafka://: LeaveGroup) states its own bound and why. An
    #: ephemeral subscription's close is held to :data:`CLOSE_BOUND` on every backend.
    close_bound: float = CLOSE_BOUND

    #: URL options that make the backend's blocking reads (long polls) last at least
    #: 2 s, so that a close waiting one out fails the bound of the close tests.
    long_reads: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self._opened: list[PubSub] = []

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    async def _open(self) -> PubSub:
        raise NotImplementedError

    async def open(self) -> PubSub:
        ps = await self._open()
        if ps not in self._opened:
            self._opened.append(ps)
        return ps

    async def open_with(self, **options: str) -> PubSub:
        """A new PubSub like :meth:`open`'s, with these URL options (closed in ``aclose``);
        the ones given the same options share the backend's storage."""
        ps = await self._open_with(options)
        if ps not in self._opened:
            self._opened.append(ps)
        return ps

    async def _open_with(self, options: dict[str, str]) -> PubSub:
        raise NotImplementedError

    async def settled(self, ps: PubSub, sub: Subscription) -> None:
        """Return once the settlements made so far on ``sub`` have reached the backend
        (and the subscription knows it), so its ``close()`` has nothing left to send."""

    async def crash(self, ps: PubSub) -> None:
        """Make ``ps`` vanish as a killed process would: no settlements flushed, no goodbye."""
        raise NotImplementedError

    async def restart_server(self, down_for: float) -> None:
        """Stop the backend's server, keep it down ``down_for`` seconds, start it again."""
        raise NotImplementedError

    async def aclose(self) -> None:
        for ps in reversed(self._opened):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ps.close(), 30)
        self._opened.clear()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def collect(
    sub: Subscription,
    count: int,
    *,
    timeout: float = RECEIVE_TIMEOUT,
    ack: bool = True,
    settle: Callable[[Message], Awaitable[None]] | None = None,
) -> list[Message]:
    """Receive ``count`` messages from ``sub`` (acking each unless told not to)."""
    got: list[Message] = []

    async def run() -> None:
        while len(got) < count:
            msg = await sub.__anext__()
            got.append(msg)
            if settle is not None:
                await settle(msg)
            elif ack:
                msg.ack()

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"received {len(got)} of {count} messages within {timeout}s")
    return got


async def nothing_arrives(sub: Subscription, within: float) -> None:
    """Assert no message arrives on ``sub`` within ``within`` seconds."""
    try:
        msg = await asyncio.wait_for(sub.__anext__(), within)
    except TimeoutError:
        return
    pytest.fail(f"unexpected message {msg!r}")


async def collect_ids(
    sub: Subscription, want: set[str], *, timeout: float = RECEIVE_TIMEOUT
) -> set[str]:
    """Receive and ack until every id in ``want`` was seen (duplicates allowed)."""
    seen: set[str] = set()

    async def run() -> None:
        while not want <= seen:
            msg = await sub.__anext__()
            seen.add(msg.id)
            msg.ack()

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"missing {len(want - seen)} of {len(want)} messages after {timeout}s")
    return seen


async def parked(sub: Subscription) -> asyncio.Task[Message]:
    """A reader waiting in ``sub.__anext__()`` (started, and given a turn to park)."""
    task = asyncio.create_task(sub.__anext__())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    return task


async def ended(reader: asyncio.Task[Message]) -> None:
    """Assert the parked ``reader`` ended with ``StopAsyncIteration`` (its subscription closed)."""
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 5)


async def logged(
    caplog: pytest.LogCaptureFixture, text: str, *, timeout: float = RECEIVE_TIMEOUT
) -> list[logging.LogRecord]:
    """Wait until a captured record's message contains ``text``; return those that do."""
    async with asyncio.timeout(timeout):
        while True:
            found = [r for r in caplog.records if text in r.getMessage()]
            if found:
                return found
            await asyncio.sleep(0.02)


async def outage_is_logged_once(
    caplog: pytest.LogCaptureFixture,
    bus: PubSub,
    outage: Callable[[], Awaitable[None]],
    *,
    backend_logger: str,
    client_logger: str | None,
) -> None:
    """Two outages of ``bus``'s server (``outage()`` takes it away and back) while a
    group subscription is open: each makes eventmill log exactly one WARNING under
    ``backend_logger`` (the server unreachable) and one INFO (reachable again). The
    client library's own lines (under ``client_logger``) appear in the first and, with
    that logger set to CRITICAL, not in the second."""
    caplog.set_level(logging.INFO)
    topic, group = unique("t"), unique("g")
    sub = await bus.subscribe(topic, group=group)
    await bus.publish(topic, Message(b"before"))
    await collect(sub, 1)
    client = logging.getLogger(client_logger) if client_logger is not None else None
    try:
        for silenced in (False, True):
            if client is not None and silenced:
                client.setLevel(logging.CRITICAL)
            caplog.clear()
            await outage()
            await logged(caplog, "reachable again", timeout=60)
            after = Message(b"after")
            await bus.publish(topic, after)
            await collect_ids(sub, {after.id}, timeout=60)
            ours = [
                r
                for r in caplog.records
                if r.name == backend_logger and r.levelno >= logging.WARNING
            ]
            assert [r.getMessage() for r in ours] == [ours[0].getMessage()], (
                "one warning per outage, not: " + "; ".join(r.getMessage() for r in ours)
            )
            assert "unreachable" in ours[0].getMessage()
            if client_logger is not None:
                theirs = [
                    r
                    for r in caplog.records
                    if r.name == client_logger or r.name.startswith(client_logger + ".")
                ]
                if silenced:
                    assert not theirs, [r.getMessage() for r in theirs]
                else:
                    assert theirs, f"no line of {client_logger} to silence"
    finally:
        if client is not None:
            client.setLevel(logging.NOTSET)
    await sub.close()


def msgs(n: int, prefix: str = "m", **metadata: str) -> list[Message]:
    return [Message(f"{prefix}-{i}".encode(), {"i": str(i), **metadata}) for i in range(n)]


class ConformanceSuite:
    """Tests every backend passes. Subclasses provide the ``harness`` fixture."""

    @pytest.fixture
    async def bus(self, harness: Harness) -> PubSub:
        return await harness.open()

    def need(self, holder: Harness | PubSub, **flags: object) -> None:
        caps = holder.capabilities
        for name, wanted in flags.items():
            have = getattr(caps, name)
            ok = have in wanted if isinstance(wanted, tuple) else have == wanted
            if not ok:
                pytest.skip(f"backend capability {name}={have!r} (test needs {wanted!r})")

    # -- the message arrives intact ----------------------------------------------------

    async def test_id_payload_metadata_intact(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        sent = [
            Message(b"hello", {"k": "v", "user_id": "u-1"}, id="fixed-id-1"),
            Message(b"", {}),
            Message(bytes(range(256)) * 4, {"unicode": "héllo ✓ 日本", "empty": ""}),
            Message(b"x" * 300_000, {"big": "yes"}),
        ]
        await bus.publish(topic, *sent)
        got = await collect(sub, len(sent))
        by_id = {m.id: m for m in got}
        assert set(by_id) == {m.id for m in sent}
        for m in sent:
            r = by_id[m.id]
            assert r.payload == m.payload
            assert isinstance(r.payload, bytes)
            assert r.metadata == m.metadata
        await sub.close()

    async def test_publish_rejects_bad_input(self, bus: PubSub) -> None:
        with pytest.raises(InvalidNameError):
            await bus.publish("bad topic name!", Message(b"x"))
        with pytest.raises(InvalidNameError):
            await bus.subscribe("")
        with pytest.raises(InvalidNameError):
            await bus.subscribe(unique("t"), group="no spaces allowed")
        for name in ("orders..v2", "orders.", ".orders", "."):  # empty NATS tokens
            with pytest.raises(InvalidNameError):
                await bus.publish(name, Message(b"x"))
        with pytest.raises(TypeError):
            await bus.publish(unique("t"), b"raw bytes")  # type: ignore[arg-type]
        # changed after it was built (the constructor checked it then): refused alike,
        # on every backend, rather than sent half-right or failing deep in a client
        changed = Message(b"x")
        changed.payload = "text"  # type: ignore[assignment]
        with pytest.raises(TypeError, match="payload must be bytes"):
            await bus.publish(unique("t"), changed)
        tagged = Message(b"x", {"a": "b"})
        tagged.metadata["n"] = 1  # type: ignore[assignment]
        with pytest.raises(TypeError, match="metadata must map str to str"):
            await bus.publish(unique("t"), tagged)

    async def test_supports_transactions_says_what_the_capabilities_say(self, bus: PubSub) -> None:
        assert supports_transactions(bus) is bus.capabilities.transactions
        if not bus.capabilities.transactions:  # the keyword is refused, never ignored
            with pytest.raises(TypeError):
                await bus.publish(unique("t"), Message(b"x"), transaction=object())  # type: ignore[call-arg]

    async def test_publish_after_close_raises(self, harness: Harness) -> None:
        ps = await harness.open()
        await ps.close()
        await ps.close()  # idempotent
        with pytest.raises(ClosedError):
            await ps.publish(unique("t"), Message(b"x"))

    async def test_iteration_ends_when_subscription_closes(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        waiters = [asyncio.create_task(anext(sub, None)) for _ in range(3)]
        await asyncio.sleep(0.1)
        await sub.close()
        results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert results == [None, None, None]
        assert [m async for m in sub] == []

    async def test_concurrent_receivers_share_one_subscription(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        sent = msgs(40)
        await bus.publish(topic, *sent)
        parts = await asyncio.gather(*(collect(sub, 10) for _ in range(4)))
        ids = [m.id for part in parts for m in part]
        assert sorted(ids) == sorted(m.id for m in sent)
        await sub.close()

    # -- fan-out and isolation ---------------------------------------------------------

    async def test_topics_are_isolated(self, bus: PubSub) -> None:
        a, b, group = unique("ta"), unique("tb"), unique("g")
        sub_a = await bus.subscribe(a, group=group)
        sub_b = await bus.subscribe(b, group=group)
        await bus.publish(a, *msgs(5, "a"))
        await bus.publish(b, *msgs(7, "b"))
        got_a = await collect(sub_a, 5)
        got_b = await collect(sub_b, 7)
        assert all(m.payload.startswith(b"a-") for m in got_a)
        assert all(m.payload.startswith(b"b-") for m in got_b)
        await nothing_arrives(sub_a, 0.5)
        await nothing_arrives(sub_b, 0.2)

    async def test_fifty_concurrent_subscribers_in_one_group(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        subs = [await bus.subscribe(topic, group=group) for _ in range(50)]
        sent = msgs(500)
        received: list[str] = []
        done = asyncio.Event()

        async def consume(sub: Subscription) -> None:
            async for m in sub:
                received.append(m.id)
                m.ack()
                if len(set(received)) >= len(sent):
                    done.set()

        tasks = [asyncio.create_task(consume(s)) for s in subs]
        await bus.publish(topic, *sent)
        try:
            await asyncio.wait_for(done.wait(), RECEIVE_TIMEOUT)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert set(received) == {m.id for m in sent}
        await asyncio.gather(*(s.close() for s in subs))

    async def test_fifty_concurrent_ephemeral_subscribers_each_get_all(self, bus: PubSub) -> None:
        topic = unique("t")
        subs = [await bus.subscribe(topic) for _ in range(50)]
        sent = msgs(20)
        await bus.publish(topic, *sent)
        results = await asyncio.gather(*(collect(s, len(sent)) for s in subs))
        for got in results:
            assert [m.id for m in got] == [m.id for m in sent] or {m.id for m in got} == {
                m.id for m in sent
            }
        await asyncio.gather(*(s.close() for s in subs))

    async def test_ephemeral_subscription_sees_only_messages_after_subscribe(
        self, bus: PubSub
    ) -> None:
        topic = unique("t")
        keeper = await bus.subscribe(topic, group=unique("g"))  # make the topic exist
        await bus.publish(topic, Message(b"before"))
        sub = await bus.subscribe(topic)
        await bus.publish(topic, Message(b"after"))
        (got,) = await collect(sub, 1)
        assert got.payload == b"after"
        await nothing_arrives(sub, 0.3)
        await sub.close()
        await keeper.close()

    async def test_ephemeral_subscription_keeps_nothing_after_close(self, bus: PubSub) -> None:
        topic = unique("t")
        sub = await bus.subscribe(topic)
        await bus.publish(topic, Message(b"one"))
        await collect(sub, 1)
        await sub.close()
        await bus.publish(topic, Message(b"while-away"))
        again = await bus.subscribe(topic)
        await bus.publish(topic, Message(b"two"))
        (got,) = await collect(again, 1)
        assert got.payload == b"two"
        await again.close()

    # -- consumer groups ---------------------------------------------------------------

    async def test_each_group_gets_every_message(self, bus: PubSub) -> None:
        self.need(bus, consumer_groups=True)
        topic = unique("t")
        g1 = await bus.subscribe(topic, group=unique("g1"))
        g2 = await bus.subscribe(topic, group=unique("g2"))
        sent = msgs(30)
        await bus.publish(topic, *sent)
        got1 = await collect(g1, 30)
        got2 = await collect(g2, 30)
        assert {m.id for m in got1} == {m.id for m in sent} == {m.id for m in got2}

    async def test_members_of_a_group_split_the_messages(self, bus: PubSub) -> None:
        self.need(bus, consumer_groups=True)
        topic, group = unique("t"), unique("g")
        members = [await bus.subscribe(topic, group=group) for _ in range(2)]
        seen: dict[int, list[str]] = {0: [], 1: []}
        total = 200

        async def consume(i: int, sub: Subscription) -> None:
            async for m in sub:
                seen[i].append(m.id)
                m.ack()
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(consume(i, s)) for i, s in enumerate(members)]
        sent: list[Message] = []
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT * 2):
                # Keep publishing (with distinct keys) until both members have work,
                # since some backends assign partitions to a member only after a rebalance.
                while not (seen[0] and seen[1]) or len(seen[0]) + len(seen[1]) < len(sent):
                    if len(sent) < total or not (seen[0] and seen[1]):
                        batch = [
                            Message(b"x", {"partition_key": f"k{len(sent) + j}"}) for j in range(10)
                        ]
                        sent.extend(batch)
                        await bus.publish(topic, *batch)
                    await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert seen[0], "member 0 received nothing"
        assert seen[1], "member 1 received nothing"
        assert set(seen[0]) | set(seen[1]) == {m.id for m in sent}
        assert not set(seen[0]) & set(seen[1]), "a message went to both members of one group"
        await asyncio.gather(*(s.close() for s in members))

    async def test_new_group_replays_from_the_oldest_message(self, bus: PubSub) -> None:
        self.need(bus, replay=True)
        topic = unique("t")
        first = await bus.subscribe(topic, group=unique("g"))
        sent = msgs(5)
        await bus.publish(topic, *sent)
        await collect(first, 5)
        late = await bus.subscribe(topic, group=unique("late"))
        got = await collect(late, 5)
        assert [m.id for m in got] == [m.id for m in sent]

    # -- ordering ----------------------------------------------------------------------

    async def test_order_per_key(self, bus: PubSub) -> None:
        self.need(bus, ordering=("per_key", "global"))
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        keys = [f"user-{k}" for k in range(4)]
        sent: list[Message] = []
        for i in range(100):
            key = keys[i % len(keys)]
            m = Message(str(i).encode(), {"partition_key": key, "key": key})
            sent.append(m)
            await bus.publish(topic, m)
        batch = [Message(str(100 + i).encode(), {"partition_key": "batch"}) for i in range(50)]
        await bus.publish(topic, *batch)
        sent.extend(batch)
        got = await collect(sub, len(sent))
        for key in [*keys, "batch"]:
            want = [m.id for m in sent if m.metadata["partition_key"] == key]
            have = [m.id for m in got if m.metadata["partition_key"] == key]
            assert have == want, f"order broken for key {key}"
        if bus.capabilities.ordering == "global":
            assert [m.id for m in got] == [m.id for m in sent]

    # -- at-least-once -----------------------------------------------------------------

    async def test_nack_means_redelivery(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        sent = Message(b"retry me", {"a": "b"})
        await bus.publish(topic, sent)
        (first,) = await collect(sub, 1, ack=False)
        assert first.nack()
        assert not first.ack(), "ack after nack must be refused"
        (second,) = await collect(sub, 1, ack=False)
        assert second.id == sent.id
        assert second.payload == b"retry me"
        assert second.metadata == {"a": "b"}
        assert second.ack()
        assert second.ack(), "ack is idempotent"
        assert not second.nack(), "nack after ack must be refused"
        await nothing_arrives(sub, 0.5)

    async def test_next_message_is_not_lost_behind_an_unacked_one(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        sent = msgs(3)
        await bus.publish(topic, *sent)
        held = await collect(sub, 3, ack=False)
        assert {m.id for m in held} == {m.id for m in sent}
        held[0].nack()
        held[1].ack()
        held[2].ack()
        (again,) = await collect(sub, 1)
        assert again.id == sent[0].id

    async def test_ten_thousand_concurrent_publishes_none_lost(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        total, publishers = 10_000, 100
        ids: set[str] = set()

        async def publisher(p: int) -> None:
            for i in range(total // publishers):
                m = Message(f"{p}-{i}".encode(), {"partition_key": f"p{p}"})
                ids.add(m.id)
                await bus.publish(topic, m)

        received: set[str] = set()

        async def consume() -> None:
            async for m in sub:
                received.add(m.id)
                m.ack()
                if len(received) >= total:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.gather(*(publisher(p) for p in range(publishers)))
        try:
            await asyncio.wait_for(asyncio.shield(consumer), RECEIVE_TIMEOUT * 4)
        except TimeoutError:
            consumer.cancel()
            pytest.fail(f"received {len(received)} of {total}")
        assert received == ids

    async def test_subscription_close_and_reopen_loses_nothing(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        sent = msgs(20)
        await bus.publish(topic, *sent[:10])
        got = await collect(sub, 5)
        await sub.close()
        await bus.publish(topic, *sent[10:])
        again = await bus.subscribe(topic, group=group)
        rest = await collect(again, 15)
        assert {m.id for m in got} | {m.id for m in rest} == {m.id for m in sent}
        assert not {m.id for m in got} & {m.id for m in rest}, "acked message came back"
        await again.close()

    async def test_settled_before_close_stays_settled(self, harness: Harness) -> None:
        """Close is graceful: acks made before close() land; unacked ones come back."""
        topic, group = unique("t"), unique("g")
        ps = await harness.open()
        sub = await ps.subscribe(topic, group=group)
        sent = msgs(100)
        await ps.publish(topic, *sent)
        got = await collect(sub, 100, ack=False)
        for m in got[:90]:
            m.ack()
        unacked = {m.id for m in got[90:]}
        await sub.close()
        for m in got[90:]:
            # too late: the subscription handed it back, so this does not count, and
            # says so (the message counts as nacked: it is delivered again)
            assert m.ack() is False
            assert (m.acked, m.nacked) == (False, True)
        other = await harness.open()
        again = await other.subscribe(topic, group=group)
        back = await collect(again, 10)
        assert {m.id for m in back} == unacked
        await nothing_arrives(again, max(1.0, harness.redelivery_timeout))
        await again.close()

    async def test_pubsub_close_flushes_acks(self, harness: Harness) -> None:
        self.need(harness, persistent=True)
        topic, group = unique("t"), unique("g")
        ps = await harness.open()
        sub = await ps.subscribe(topic, group=group)
        sent = msgs(200)
        await ps.publish(topic, *sent)
        await collect(sub, 200)
        await ps.close()
        other = await harness.open()
        again = await other.subscribe(topic, group=group)
        await other.publish(topic, Message(b"marker", id=unique("marker")))
        (first,) = await collect(again, 1)
        assert first.payload == b"marker"
        await nothing_arrives(again, max(1.0, harness.redelivery_timeout + 0.5))

    async def test_nothing_lost_across_instance_restart(self, harness: Harness) -> None:
        self.need(harness, persistent=True)
        topic, group = unique("t"), unique("g")
        ps = await harness.open()
        await ps.subscribe(topic, group=group)  # create the group
        sent = msgs(50)
        await ps.publish(topic, *sent)
        await ps.close()
        other = await harness.open()
        sub = await other.subscribe(topic, group=group)
        got = await collect(sub, 50)
        assert {m.id for m in got} == {m.id for m in sent}

    async def test_redelivery_after_consumer_crash(self, harness: Harness) -> None:
        self.need(harness, redelivers_after_crash=True)
        topic, group = unique("t"), unique("g")
        producer = await harness.open()
        consumer = await harness.open()
        sub = await consumer.subscribe(topic, group=group)
        sent = msgs(10)
        await producer.publish(topic, *sent)
        got = await collect(sub, 10, ack=False)
        for m in got[:4]:
            m.ack()
        await asyncio.sleep(0.2)  # let the backend flush those acks
        await harness.crash(consumer)
        survivor = await harness.open()
        again = await survivor.subscribe(topic, group=group)
        want = {m.id for m in got[4:]}
        seen = await collect_ids(again, want, timeout=RECEIVE_TIMEOUT + harness.redelivery_timeout)
        assert seen == want, "acked messages were redelivered after the crash"

    # -- closing -----------------------------------------------------------------------

    async def test_close_returns_at_once_while_idle_and_keeps_settlements(
        self, harness: Harness
    ) -> None:
        """An idle subscription's close() interrupts its blocking read instead of waiting
        it out, and the settlements made before it stay made."""
        topic, group = unique("t"), unique("g")
        ps = await harness.open_with(**harness.long_reads)
        sub = await ps.subscribe(topic, group=group)
        live = await ps.subscribe(topic)
        sent = msgs(10)
        await ps.publish(topic, *sent)
        await collect(sub, 10)
        await collect(live, 10)
        await harness.settled(ps, sub)
        readers = [await parked(sub), await parked(live)]
        await asyncio.sleep(IDLE)  # the scenario: idle for a while, in a blocking read
        for s, bound in ((live, CLOSE_BOUND), (sub, harness.close_bound)):
            start = time.monotonic()
            await s.close()
            elapsed = time.monotonic() - start
            assert elapsed < bound, (
                f"{'group' if s.group else 'ephemeral'} subscription close() took "
                f"{elapsed:.3f}s (bound {bound}s)"
            )
        for reader in readers:
            await ended(reader)
        # The acks landed: the group has nothing left but what comes next.
        other = await harness.open_with(**harness.long_reads)
        again = await other.subscribe(topic, group=group)
        marker = Message(b"marker")
        await other.publish(topic, marker)
        (first,) = await collect(again, 1)
        assert first.id == marker.id, "an acked message came back after close()"

    async def test_ephemeral_close_returns_at_once_right_after_a_delivery(
        self, harness: Harness
    ) -> None:
        """Closed while its reader is between reads (it just handed messages out), an
        ephemeral subscription, which has nothing to send, returns as quickly."""
        topic = unique("t")
        ps = await harness.open_with(**harness.long_reads)
        for _ in range(3):
            live = await ps.subscribe(topic)
            await ps.publish(topic, *msgs(10))
            await collect(live, 10)
            start = time.monotonic()
            await live.close()
            elapsed = time.monotonic() - start
            assert elapsed < CLOSE_BOUND, f"close() took {elapsed:.3f}s"

    async def test_bus_close_returns_at_once_while_idle(self, harness: Harness) -> None:
        topic = unique("t")
        ps = await harness.open_with(**harness.long_reads)
        sub = await ps.subscribe(topic, group=unique("g"))
        live = await ps.subscribe(topic)
        await ps.publish(topic, Message(b"one"))
        await collect(sub, 1)
        await collect(live, 1)
        await harness.settled(ps, sub)
        readers = [await parked(sub), await parked(live)]
        await asyncio.sleep(IDLE)
        start = time.monotonic()
        await ps.close()
        elapsed = time.monotonic() - start
        assert elapsed < harness.close_bound, f"bus close() took {elapsed:.3f}s"
        for reader in readers:
            await ended(reader)

    # -- the bound on unsettled messages -----------------------------------------------

    async def test_max_unsettled_holds_a_subscription_at_the_bound(self, harness: Harness) -> None:
        topic, group = unique("t"), unique("g")
        ps = await harness.open_with(max_unsettled="3")
        sub = await ps.subscribe(topic, group=group)
        live = await ps.subscribe(topic)
        sent = msgs(8)
        await ps.publish(topic, *sent)
        for s in (sub, live):
            held = await collect(s, 3, ack=False)
            await nothing_arrives(s, 0.5)  # three handed out, none settled: no fourth
            held[0].ack()
            (fourth,) = await collect(s, 1, ack=False)  # settling one lets the next through
            await nothing_arrives(s, 0.3)
            held[1].nack()
            (fifth,) = await collect(s, 1, ack=False)  # a nack settles too
            await nothing_arrives(s, 0.3)
            for m in (held[2], fourth, fifth):
                m.ack()
            seen = {m.id for m in (held[0], held[2], fourth, fifth)}
            rest = await collect_ids(s, {m.id for m in sent} - seen)
            assert rest | seen == {m.id for m in sent}

    async def test_max_unsettled_defaults_to_1000(self, bus: PubSub) -> None:
        topic, group = unique("t"), unique("g")
        sub = await bus.subscribe(topic, group=group)
        await bus.publish(topic, *msgs(1001))
        held = await collect(sub, 1000, ack=False)
        await nothing_arrives(sub, 0.5)
        held[0].ack()
        await collect(sub, 1)

    async def test_max_unsettled_can_be_unlimited(self, harness: Harness) -> None:
        topic, group = unique("t"), unique("g")
        ps = await harness.open_with(max_unsettled="unlimited")
        sub = await ps.subscribe(topic, group=group)
        sent = msgs(1500)
        await ps.publish(topic, *sent)
        # every one handed out with none settled (no bound); one held longer than the
        # backend's ack_wait (NATS's harness: 1 s) may come again meanwhile
        want, seen = {m.id for m in sent}, set()
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            while not want <= seen:
                seen.add((await anext(sub)).id)
        assert seen == want

    async def test_a_subscription_held_at_the_bound_warns_once(
        self, harness: Harness, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="eventmill.pubsub")
        topic, group = unique("t"), unique("g")
        ps = await harness.open_with(max_unsettled="2", stall_warning="0.2")
        sub = await ps.subscribe(topic, group=group)
        await ps.publish(topic, *msgs(3))
        held = await collect(sub, 2, ack=False)
        reader = await parked(sub)
        (warning,) = await logged(caplog, "raise max_unsettled")
        await asyncio.sleep(0.7)  # held three more periods: still one warning
        found = [r for r in caplog.records if "raise max_unsettled" in r.getMessage()]
        assert found == [warning]
        assert warning.levelno == logging.WARNING
        assert warning.name.startswith("eventmill.pubsub."), warning.name
        text = warning.getMessage()
        assert "2 messages handed out and not settled" in text, text
        assert "settle them (ack/nack) or raise max_unsettled" in text, text
        assert repr(topic) in text, text
        assert repr(group) in text, text
        held[0].ack()
        third = await asyncio.wait_for(reader, RECEIVE_TIMEOUT)
        third.ack()
        held[1].ack()

    async def test_reconnect_after_server_restart(self, harness: Harness) -> None:
        self.need(harness, has_server=True)
        topic, group = unique("t"), unique("g")
        ps = await harness.open()
        sub = await ps.subscribe(topic, group=group)
        before, during, after = msgs(10, "before"), msgs(10, "during"), msgs(10, "after")
        await ps.publish(topic, *before)
        got = await collect(sub, 10)

        async def publish_during() -> None:
            await asyncio.sleep(0.2)
            for m in during:
                await ps.publish(topic, m)

        during_task = asyncio.create_task(publish_during())
        await harness.restart_server(down_for=1.5)
        await asyncio.wait_for(during_task, 60)
        await ps.publish(topic, *after)
        assert {m.id for m in got} == {m.id for m in before}
        await collect_ids(sub, {m.id for m in during + after}, timeout=60)


__all__ = [
    "ConformanceSuite",
    "Harness",
    "collect",
    "collect_ids",
    "ended",
    "logged",
    "msgs",
    "nothing_arrives",
    "outage_is_logged_once",
    "parked",
    "unique",
]
