"""A connection's buffer in process: a frame pushed while nothing is queued goes to the
connection's direct writer; once anything is queued (or the writer cannot take a
frame), frames wait in order behind it, bounded as before."""

from __future__ import annotations

from eventmill.realtime import CloseCode
from eventmill.realtime.connection import Connection


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
