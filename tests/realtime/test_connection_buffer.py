"""A connection's buffer in process: a frame pushed while nothing is queued goes to the
connection's direct writer; once anything is queued (or the writer cannot take a
frame), frames wait in order behind it, bounded as before."""

from __future__ import annotations

from eventmill.realtime import CloseCode
from eventmill.realtime.connection import Connection
from eventmill.realtime.feed import FeedEvent


class Writer:
    """A direct writer that takes frames while ``open`` (and records them)."""

    def __init__(self) -> None:
        self.open = True
        self.written: list[str | bytes] = []

    def __call__(self, frame: str | bytes) -> bool:
        if not self.open:
            return False
        self.written.append(frame)
        return True


def _connection(max_messages: int = 3) -> tuple[Connection, Writer, list[str]]:
    conn = Connection(
        "ws",
        user_id="u1",
        all_users=False,
        patterns=None,
        max_messages=max_messages,
        max_bytes=1 << 20,
    )
    writer = Writer()
    spawned: list[str] = []
    conn.direct = writer
    conn.spawn = lambda: spawned.append("sender")
    return conn, writer, spawned


def test_a_frame_pushed_while_nothing_is_queued_is_written_at_once() -> None:
    conn, writer, spawned = _connection()
    assert conn.push("a")
    assert conn.push_if_room("heartbeat")
    assert writer.written == ["a", "heartbeat"]
    assert conn.queue is None
    assert spawned == []  # no sender run for it


def test_frames_queue_in_order_behind_a_frame_the_writer_could_not_take() -> None:
    conn, writer, spawned = _connection()
    writer.open = False  # e.g. a write waits for the client's socket, or a replay runs
    assert conn.push("a")
    writer.open = True
    assert conn.push("b")  # "a" is queued: "b" must not overtake it
    assert writer.written == []
    assert spawned == ["sender", "sender"]
    assert [conn.pop(), conn.pop(), conn.pop()] == ["a", "b", None]
    assert conn.push("c")  # the queue is empty again: straight to the writer
    assert writer.written == ["c"]


def test_the_queue_stays_bounded_when_the_writer_takes_nothing() -> None:
    conn, writer, _ = _connection(max_messages=3)
    writer.open = False
    assert all(conn.push(f) for f in ("a", "b", "c"))
    assert not conn.push("d")
    assert conn.closing == (CloseCode.SLOW_CONSUMER, "slow_consumer")
    assert conn.queue is None  # dropped with the connection


def test_a_closing_connection_writes_nothing() -> None:
    conn, writer, _ = _connection()
    conn.close(CloseCode.GOING_AWAY, "shutdown")
    assert not conn.push("a")
    assert not conn.push_if_room("heartbeat")
    assert writer.written == []


def _feed_event(position: int) -> FeedEvent:
    return FeedEvent(position, f"evt_{position}", "test.a", "u1", f'{{"id":"evt_{position}"}}')


def test_an_event_goes_to_the_wire_writer_as_its_frame_on_the_wire() -> None:
    conn, writer, _ = _connection()
    wire = Writer()
    conn.wire = wire
    event = _feed_event(1)
    assert conn.push_event(event)
    assert wire.written == [event.ws_wire()]
    assert writer.written == []
    # the frame is the text frame of the event's message (FIN + text opcode, length)
    message = event.ws_frame().encode()
    assert event.ws_wire() == bytes((0x81, len(message))) + message


def test_an_event_the_wire_writer_cannot_take_goes_the_texts_way_in_order() -> None:
    conn, writer, _ = _connection()
    wire = Writer()
    conn.wire = wire
    wire.open = writer.open = False  # the socket is full
    first, second = _feed_event(1), _feed_event(2)
    assert conn.push_event(first)
    wire.open = writer.open = True
    assert conn.push_event(second)  # the first is queued: the second waits behind it
    assert wire.written == writer.written == []
    assert [conn.pop(), conn.pop()] == [first.ws_frame(), second.ws_frame()]
    assert conn.push_event(_feed_event(3))
    assert len(wire.written) == 1


def test_an_sse_connection_gets_the_events_sse_frame() -> None:
    conn = Connection(
        "sse", user_id="u1", all_users=False, patterns=None, max_messages=3, max_bytes=1 << 20
    )
    conn.wire = Writer()  # never used for SSE
    event = _feed_event(7)
    assert conn.push_event(event)
    assert conn.pop() == b'id: 7\nevent: test.a\ndata: {"id":"evt_7"}\n\n'
