"""Router behaviour on the real memory:// bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from eventmill import ClosedError, Message, PublishError, RouterError
from eventmill.pubsub.memory import MemoryPubSub
from eventmill.router import Handler, HandlerInfo, HandlerResult, Router, current_handler
from eventmill.router.middleware import Deduplicator
from tests.pubsub.conformance import collect, nothing_arrives, unique
from tests.router.support import running

REPO = Path(__file__).resolve().parents[2]


async def test_handler_gets_messages_and_they_are_acked(bus: MemoryPubSub) -> None:
    topic, group = unique("t"), unique("g")
    seen: list[bytes] = []
    got_all = asyncio.Event()

    async def handle(msg: Message) -> None:
        seen.append(msg.payload)
        if len(seen) == 3:
            got_all.set()

    router = Router(bus)
    router.add_handler("h", topic, handle, group=group)
    async with running(router):
        await bus.publish(topic, Message(b"1"), Message(b"2"), Message(b"3"))
        await asyncio.wait_for(got_all.wait(), 10)
    assert seen == [b"1", b"2", b"3"]
    # Acked: the group has nothing left to deliver.
    sub = await bus.subscribe(topic, group=group)
    await nothing_arrives(sub, 0.2)


async def test_returned_messages_are_published_to_publish_topic(bus: MemoryPubSub) -> None:
    topic, out = unique("t"), unique("out")
    out_sub = await bus.subscribe(out, group="check")

    async def handle(msg: Message) -> HandlerResult:
        if msg.payload == b"one":
            return Message(b"one-out")
        if msg.payload == b"many":
            return [Message(b"many-1"), Message(b"many-2")]
        return None

    router = Router(bus, bus)
    router.add_handler("h", topic, handle, group="g", publish_topic=out)
    async with running(router):
        await bus.publish(topic, Message(b"one"), Message(b"none"), Message(b"many"))
        got = await collect(out_sub, 3)
        await nothing_arrives(out_sub, 0.1)
    assert [m.payload for m in got] == [b"one-out", b"many-1", b"many-2"]


async def test_handler_exception_means_redelivery(bus: MemoryPubSub) -> None:
    topic = unique("t")
    attempts: dict[bytes, int] = {}
    done = asyncio.Event()

    async def handle(msg: Message) -> None:
        attempts[msg.payload] = attempts.get(msg.payload, 0) + 1
        if attempts[msg.payload] < 3:
            raise ValueError("not yet")
        done.set()

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g")
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(done.wait(), 10)
    assert attempts == {b"x": 3}
    sub = await bus.subscribe(topic, group="g")
    await nothing_arrives(sub, 0.1)


async def test_failed_publish_of_results_means_nack(bus: MemoryPubSub) -> None:
    topic = unique("t")
    dead = MemoryPubSub()
    await dead.close()  # publishing to it raises ClosedError
    deliveries: list[str] = []
    third = asyncio.Event()

    async def handle(msg: Message) -> Message:
        deliveries.append(msg.id)
        if len(deliveries) == 3:
            third.set()
        return Message(b"result")

    router = Router(bus, dead)
    router.add_handler("h", topic, handle, group="g", publish_topic=unique("out"))
    sent = Message(b"x")
    async with running(router):
        await bus.publish(topic, sent)
        await asyncio.wait_for(third.wait(), 10)
    assert deliveries[:3] == [sent.id] * 3
    with pytest.raises(ClosedError):
        await dead.publish("t", Message(b"y"))


class _FlakyPublisher:
    """Publishes to ``bus``, except that its first ``failures`` publishes raise."""

    def __init__(self, bus: MemoryPubSub, failures: int) -> None:
        self.bus = bus
        self.failures = failures

    async def publish(self, topic: str, *messages: Message) -> None:
        if self.failures:
            self.failures -= 1
            raise PublishError("the broker said no")
        await self.bus.publish(topic, *messages)

    async def close(self) -> None:
        pass


async def test_results_not_published_are_processed_again_under_deduplicator(
    bus: MemoryPubSub,
) -> None:
    """Deduplicator keeps a message's key once its handler succeeded; when the router
    then cannot publish the results and nacks, it must forget the key, or the
    redelivery is acked as a duplicate and the results are lost."""
    topic, out = unique("t"), unique("out")
    calls: list[str] = []

    async def handle(msg: Message) -> Message:
        calls.append(msg.id)
        return Message(b"result:" + msg.payload)

    results = await bus.subscribe(out, group="check")
    router = Router(bus, _FlakyPublisher(bus, failures=1))  # type: ignore[arg-type]
    router.add_middleware(Deduplicator())
    router.add_handler("h", topic, handle, group="g", publish_topic=out)
    sent = Message(b"x")
    async with running(router):
        await bus.publish(topic, sent)
        [got] = await collect(results, 1, timeout=10)
    assert got.payload == b"result:x"
    assert calls == [sent.id, sent.id]  # processed again after the failed publish
    await results.close()


async def test_a_message_failing_every_time_does_not_spin(bus: MemoryPubSub) -> None:
    """Without Retry or PoisonQueue a failing message comes back at once, forever: the
    worker pauses after each failure in a row from the second (50, 100, 200 ms, ...), so
    its fifth try comes no sooner than 350 ms after the first (unpaused: ~0.2 ms)."""
    topic = unique("t")
    tries: list[float] = []
    fifth = asyncio.Event()

    async def handle(msg: Message) -> None:
        tries.append(asyncio.get_running_loop().time())
        if len(tries) == 5:
            fifth.set()
        raise ValueError("always")

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g")
    async with running(router):
        await bus.publish(topic, Message(b"poison"))
        await asyncio.wait_for(fifth.wait(), 30)
    assert tries[4] - tries[0] >= 0.35


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_stop(
    bus: MemoryPubSub,
) -> None:
    topic = unique("t")
    seen: list[bytes] = []
    second = asyncio.Event()

    async def handle(msg: Message) -> None:
        seen.append(msg.payload)
        if seen.count(msg.payload) == 1 and msg.payload == b"a":
            raise asyncio.CancelledError  # e.g. from a library's own cancelled task
        if msg.payload == b"b":
            second.set()

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g")
    async with running(router):
        await bus.publish(topic, Message(b"a"), Message(b"b"))
        await asyncio.wait_for(second.wait(), 10)
        assert router.is_running
    assert seen.count(b"a") == 2  # nacked and redelivered


async def test_results_without_publish_topic_or_of_wrong_type_are_nacked(
    bus: MemoryPubSub,
) -> None:
    topic = unique("t")
    calls = 0
    twice = asyncio.Event()

    async def handle(msg: Message) -> HandlerResult:
        nonlocal calls
        calls += 1
        if calls == 2:
            twice.set()
            return None
        return Message(b"nowhere to go")

    router = Router(bus, bus)
    router.add_handler("h", topic, handle, group="g")
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(twice.wait(), 10)
    assert calls == 2

    bad_calls = 0
    redelivered = asyncio.Event()

    async def returns_bytes(msg: Message) -> HandlerResult:
        nonlocal bad_calls
        bad_calls += 1
        if bad_calls == 2:
            redelivered.set()
            return None
        return [b"not a message"]  # type: ignore[list-item]

    topic2 = unique("t")
    router2 = Router(bus, bus)
    router2.add_handler("h", topic2, returns_bytes, group="g", publish_topic=unique("o"))
    async with running(router2):
        await bus.publish(topic2, Message(b"x"))
        await asyncio.wait_for(redelivered.wait(), 10)
    assert bad_calls == 2


async def test_configuration_errors(bus: MemoryPubSub) -> None:
    async def handle(msg: Message) -> None:
        return None

    router = Router(bus)
    router.add_handler("a", unique("t"), handle)
    with pytest.raises(RouterError, match="duplicate"):
        router.add_handler("a", unique("t"), handle)
    with pytest.raises(RouterError, match="publisher"):
        router.add_handler("b", unique("t"), handle, publish_topic="out")
    with pytest.raises(RouterError, match="concurrency"):
        router.add_handler("c", unique("t"), handle, concurrency=0)
    with pytest.raises(ValueError, match="topic"):
        router.add_handler("d", "bad topic!", handle)
    with pytest.raises(TypeError):
        router.add_handler("e", unique("t"), "not callable")  # type: ignore[arg-type]
    assert [h.name for h in router.handlers] == ["a"]
    async with running(router):
        with pytest.raises(RouterError):
            router.add_handler("late", unique("t"), handle)
        with pytest.raises(RouterError):
            router.add_middleware(lambda h: h)
        with pytest.raises(RouterError):
            await router.run()


async def test_close_before_run(bus: MemoryPubSub) -> None:
    router = Router(bus)
    await router.close()
    with pytest.raises(RouterError):
        await router.run()
    with pytest.raises(RouterError, match="closed before"):
        await router.running()


async def test_failed_subscribe_fails_run_and_running() -> None:
    dead = MemoryPubSub()
    await dead.close()

    async def handle(msg: Message) -> None:
        return None

    router = Router(dead)
    router.add_handler("h", unique("t"), handle, group="g")
    task = asyncio.create_task(router.run())
    with pytest.raises(RouterError, match="failed to start"):
        await asyncio.wait_for(router.running(), 10)
    with pytest.raises(ClosedError):
        await task


async def test_concurrency_limit_is_respected(bus: MemoryPubSub) -> None:
    topic = unique("t")
    active = peak = handled = 0
    full = asyncio.Event()
    all_done = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal active, peak, handled
        active += 1
        peak = max(peak, active)
        if active == 4:
            full.set()
        await full.wait()
        await asyncio.sleep(0)
        active -= 1
        handled += 1
        if handled == 12:
            all_done.set()

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g", concurrency=4)
    async with running(router):
        await bus.publish(topic, *(Message(b"%d" % i) for i in range(12)))
        await asyncio.wait_for(all_done.wait(), 10)
    assert peak == 4


async def test_default_concurrency_keeps_order(bus: MemoryPubSub) -> None:
    topic = unique("t")
    seen: list[int] = []
    active = peak = 0
    done = asyncio.Event()

    async def handle(msg: Message) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        seen.append(int(msg.payload))
        active -= 1
        if len(seen) == 50:
            done.set()

    router = Router(bus)
    router.add_handler("h", topic, handle, group="g")
    async with running(router):
        await bus.publish(topic, *(Message(b"%d" % i) for i in range(50)))
        await asyncio.wait_for(done.wait(), 10)
    assert seen == list(range(50))
    assert peak == 1


async def test_graceful_close_lets_in_flight_handlers_finish_and_ack(bus: MemoryPubSub) -> None:
    topic, group = unique("t"), unique("g")
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[bytes] = []

    async def handle(msg: Message) -> None:
        started.set()
        await release.wait()
        finished.append(msg.payload)

    router = Router(bus)
    router.add_handler("h", topic, handle, group=group)
    task = asyncio.create_task(router.run())
    await router.running()
    await bus.publish(topic, Message(b"first"), Message(b"second"), Message(b"third"))
    await asyncio.wait_for(started.wait(), 10)
    closing = asyncio.create_task(router.close(timeout=30))
    await asyncio.sleep(0.05)
    assert not closing.done(), "close() must wait for the in-flight handler"
    release.set()
    await asyncio.wait_for(closing, 10)
    await asyncio.wait_for(task, 10)
    assert finished == [b"first"]
    # The in-flight message was acked before the subscription closed; the rest stay queued.
    sub = await bus.subscribe(topic, group=group)
    got = await collect(sub, 2)
    assert [m.payload for m in got] == [b"second", b"third"]
    await nothing_arrives(sub, 0.1)


async def test_close_timeout_cancels_in_flight_handlers_and_they_are_redelivered(
    bus: MemoryPubSub,
) -> None:
    topic, group = unique("t"), unique("g")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handle(msg: Message) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never finishes on its own
        except asyncio.CancelledError:
            cancelled.set()
            raise

    router = Router(bus)
    router.add_handler("h", topic, handle, group=group)
    task = asyncio.create_task(router.run())
    await router.running()
    sent = Message(b"stuck")
    await bus.publish(topic, sent)
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(router.close(timeout=0.05), 10)
    await asyncio.wait_for(task, 10)
    assert cancelled.is_set()
    sub = await bus.subscribe(topic, group=group)
    got = await collect(sub, 1)
    assert got[0].id == sent.id


async def test_run_returns_when_the_subscriber_closes() -> None:
    bus = MemoryPubSub()

    async def handle(msg: Message) -> None:
        return None

    router = Router(bus)
    router.add_handler("h", unique("t"), handle, group="g", concurrency=3)
    task = asyncio.create_task(router.run())
    await router.running()
    assert router.is_running
    await bus.close()
    await asyncio.wait_for(task, 10)
    assert not router.is_running


async def test_ephemeral_handler_sees_messages_published_while_running(bus: MemoryPubSub) -> None:
    topic = unique("t")
    got: list[bytes] = []
    done = asyncio.Event()

    async def handle(msg: Message) -> None:
        got.append(msg.payload)
        if len(got) == 2:
            done.set()

    r1, r2 = Router(bus), Router(bus)
    r1.add_handler("a", topic, handle)
    r2.add_handler("b", topic, handle)
    async with running(r1), running(r2):
        await bus.publish(topic, Message(b"fan-out"))
        await asyncio.wait_for(done.wait(), 10)
    assert got == [b"fan-out", b"fan-out"]


async def test_middleware_order_and_current_handler(bus: MemoryPubSub) -> None:
    topic = unique("t")
    calls: list[str] = []
    infos: list[HandlerInfo | None] = []
    done = asyncio.Event()

    def tag(name: str) -> object:
        def middleware(handler: Handler) -> Handler:
            async def wrapped(msg: Message) -> HandlerResult:
                calls.append(f"{name}>")
                result = await handler(msg)
                calls.append(f"<{name}")
                return result

            return wrapped

        return middleware

    async def handle(msg: Message) -> None:
        calls.append("handler")
        infos.append(current_handler())
        done.set()

    router = Router(bus)
    router.add_middleware(tag("r1"), tag("r2"))  # type: ignore[arg-type]
    router.add_handler("named", topic, handle, group="grp", middleware=[tag("h1")])  # type: ignore[list-item]
    async with running(router):
        await bus.publish(topic, Message(b"x"))
        await asyncio.wait_for(done.wait(), 10)
    assert calls == ["r1>", "r2>", "h1>", "handler", "<h1", "<r2", "<r1"]
    assert infos == [HandlerInfo(name="named", topic=topic, group="grp", publish_topic=None)]
    assert current_handler() is None


async def test_many_handlers_each_get_their_topic(bus: MemoryPubSub) -> None:
    topics = [unique("t") for _ in range(3)]
    got: dict[str, list[bytes]] = {t: [] for t in topics}
    done = asyncio.Event()

    def make(topic: str) -> Handler:
        async def handle(msg: Message) -> Sequence[Message]:
            got[topic].append(msg.payload)
            if all(got.values()):
                done.set()
            return ()

        return handle

    router = Router(bus)
    for t in topics:
        router.add_handler(t, t, make(t), group="g")
    async with running(router):
        for t in topics:
            await bus.publish(t, Message(t.encode()))
        await asyncio.wait_for(done.wait(), 10)
    assert got == {t: [t.encode()] for t in topics}


_SIGTERM_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from eventmill import Message
    from eventmill.pubsub.memory import MemoryPubSub
    from eventmill.router import Router

    async def main() -> None:
        bus = MemoryPubSub()
        finished = []

        async def handle(msg: Message) -> None:
            print("started", flush=True)
            await asyncio.sleep(0.5)  # still in flight when SIGTERM arrives
            finished.append(msg.payload)

        router = Router(bus)
        router.add_handler("h", "jobs", handle, group="g")
        await (await bus.subscribe("jobs", group="g")).close()  # the group exists from now on
        await bus.publish("jobs", Message(b"job-1"), Message(b"job-2"))
        await router.run(handle_signals=True)
        sub = await bus.subscribe("jobs", group="g")
        left = [(await sub.__anext__()).payload]
        print("finished", finished, "left", left, flush=True)
        await bus.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    print("exited cleanly", flush=True)
    """
)


@contextlib.contextmanager
def _handler_started(tmp_path: Path, source: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``source`` as a script; yield once its handler printed ``started``.

    The process is killed on the way out if the test left it running.
    """
    script = tmp_path / "router_script.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "the router never started the handler"
        assert proc.stdout.readline().strip() == "started"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_closes_gracefully_after_in_flight_work(tmp_path: Path) -> None:
    with _handler_started(tmp_path, _SIGTERM_SCRIPT) as proc:
        proc.terminate()  # SIGTERM while job-1 is in flight
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # job-1 finished and was acked; job-2 was never pulled and is still queued.
    assert "finished [b'job-1'] left [b'job-2']" in out
    assert "exited cleanly" in out


_SECOND_SIGNAL_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from eventmill import Message
    from eventmill.pubsub.memory import MemoryPubSub
    from eventmill.router import Router

    async def main() -> None:
        bus = MemoryPubSub()

        async def handle(msg: Message) -> None:
            print("started", flush=True)
            await asyncio.Event().wait()  # never finishes on its own

        router = Router(bus)
        router.add_handler("h", "jobs", handle, group="g")
        await (await bus.subscribe("jobs", group="g")).close()
        await bus.publish("jobs", Message(b"job-1"))
        await router.run(handle_signals=True)
        sub = await bus.subscribe("jobs", group="g")
        print("left", [(await sub.__anext__()).payload], flush=True)
        await bus.close()

    asyncio.run(asyncio.wait_for(main(), 20))
    print("exited cleanly", flush=True)
    """
)


def test_second_signal_cancels_in_flight_handlers(tmp_path: Path) -> None:
    with _handler_started(tmp_path, _SECOND_SIGNAL_SCRIPT) as proc:
        proc.send_signal(signal.SIGINT)  # graceful: would wait 30 s for the stuck handler
        proc.send_signal(signal.SIGTERM)  # second signal: cancel it now
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "left [b'job-1']" in out  # the cancelled message was nacked, hence redelivered
    assert "exited cleanly" in out


async def test_cancelling_run_nacks_in_flight_messages(bus: MemoryPubSub) -> None:
    topic, group = unique("t"), unique("g")
    started = asyncio.Event()

    async def handle(msg: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    router = Router(bus)
    router.add_handler("h", topic, handle, group=group)
    task = asyncio.create_task(router.run())
    await router.running()
    sent = Message(b"x")
    await bus.publish(topic, sent)
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not router.is_running
    [again] = await collect(await bus.subscribe(topic, group=group), 1)
    assert again.id == sent.id


async def test_router_without_handlers_runs_until_closed(bus: MemoryPubSub) -> None:
    router = Router(bus)
    task = asyncio.create_task(router.run())
    await router.running()
    await asyncio.sleep(0.01)
    assert not task.done()
    await router.close()
    await asyncio.wait_for(task, 10)


def test_a_sync_handler_is_refused_when_added(bus: MemoryPubSub) -> None:
    """A plain function would fail on every message, each redelivered without end:
    refused at once, saying how to wrap it (an async __call__ is fine)."""

    def sync_handler(msg: Message) -> None:
        return None

    class AsyncCallable:
        async def __call__(self, msg: Message) -> None:
            return None

    router = Router(bus)
    with pytest.raises(RouterError, match="must be an async function"):
        router.add_handler("sync", "t", sync_handler, group="g")  # type: ignore[arg-type]
    router.add_handler("callable", "t", AsyncCallable(), group="g")
