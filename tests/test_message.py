"""Message: construction checks, ack/nack state machine, ids."""

from __future__ import annotations

import os

import pytest

from eventmill import Message, new_message_id


def test_defaults_and_copies() -> None:
    md = {"a": "b"}
    m = Message(b"x", md)
    md["a"] = "changed"
    assert m.metadata == {"a": "b"}, "metadata is copied at construction"
    assert len(m.id) == 32
    assert Message(b"x", id="mine").id == "mine"
    assert Message(bytearray(b"ab")).payload == b"ab"
    c = m.copy()
    assert (c.id, c.metadata, c.payload) == (m.id, m.metadata, m.payload)
    assert c.metadata is not m.metadata


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("text",), {}),
        ((b"x", {"k": 1}), {}),
        ((b"x", {1: "v"}), {}),
        ((b"x", [("a", "b")]), {}),  # pairs are not a mapping
        ((b"x", "ab"), {}),
        ((b"x", {"k": None}), {}),
        ((b"x",), {"id": ""}),
        ((b"x",), {"id": 5}),
    ],
)
def test_bad_fields_are_type_errors(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Message(*args, **kwargs)  # type: ignore[arg-type]


def test_ack_is_idempotent_and_excludes_nack() -> None:
    calls: list[bool] = []
    m = Message._received("id", {}, b"", lambda _msg, ok: calls.append(ok))
    assert not m.settled
    assert m.ack()
    assert m.ack()
    assert not m.nack()
    assert (m.acked, m.nacked, m.settled) == (True, False, True)
    assert calls == [True], "the backend hears of the settlement exactly once"


def test_nack_is_idempotent_and_excludes_ack() -> None:
    calls: list[bool] = []
    m = Message._received("id", {}, b"", lambda _msg, ok: calls.append(ok))
    assert m.nack()
    assert m.nack()
    assert not m.ack()
    assert (m.acked, m.nacked) == (False, True)
    assert calls == [False]


def test_ids_are_unique_and_not_shared_with_a_forked_child() -> None:
    ids = {new_message_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in list(ids)[:100])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, new_message_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child_id != new_message_id()
    assert child_id not in ids
