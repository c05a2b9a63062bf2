"""The operator's event tools against a real embedded store and bus: publish, events
list/show/replay, tail (store and topic), trace, migrate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventmill import Message, open_pubsub
from eventmill.cli import app

EVENTMILL = Path(sys.executable).parent / "eventmill"


def _ok(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _publish(env: dict[str, str], name: str, user: str, n: int) -> str:
    out = _ok(env, "publish", name, "--user-id", user, "--payload", json.dumps({"n": n}))
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["duplicate"] is False
    return str(answer["id"])


def test_publish_list_show_and_trace(env: dict[str, str]) -> None:
    first = _publish(env, "order.placed", "u1", 1)
    second = _publish(env, "order.paid", "u2", 2)
    lines = _ok(env, "events", "list", "--json", "--order", "asc").strip().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [first, second]
    only = _ok(env, "events", "list", "--json", "--user-id", "u2").strip().splitlines()
    assert [json.loads(line)["payload"] for line in only] == [{"n": 2}]
    shown = json.loads(_ok(env, "events", "show", first))
    assert shown["event_name"] == "order.placed"
    assert shown["published_at"]
    hops = [json.loads(line)["hop"] for line in _ok(env, "trace", first, "--json").splitlines()]
    assert hops[:2] == ["stored", "published"]
    assert "order.placed" in _ok(env, "trace", first)


def test_a_repeated_id_is_a_duplicate_and_bad_input_a_clear_error(env: dict[str, str]) -> None:
    again = [
        json.loads(_ok(env, "publish", "order.placed", "--id", "evt_fixed").splitlines()[-1])
        for _ in range(2)
    ]
    assert [a["duplicate"] for a in again] == [False, True]
    bad = CliRunner().invoke(app, ["publish", "order.placed", "--payload", "{nope"], env=env)
    assert bad.exit_code == 2
    assert "--payload is not valid JSON" in bad.output
    for args in (["BAD NAME!!"], ["user.created", "--payload", '{"x": 1}']):
        invalid = CliRunner().invoke(app, ["publish", *args], env=env)
        assert invalid.exit_code == 2, invalid.output
        assert "invalid event" in invalid.output
        assert "Traceback" not in invalid.output
    missing = CliRunner().invoke(app, ["events", "show", "evt_none"], env=env)
    assert missing.exit_code == 1
    assert "no event with id 'evt_none'" in missing.output


@pytest.mark.parametrize(
    "args",
    [
        ["events", "list", "--since", "0001-01-01T00:00:00+01:00"],
        ["events", "replay", "--until", "9999-12-31T23:00:00-05:00"],
    ],
)
def test_a_time_outside_the_utc_years_is_a_one_line_error(
    env: dict[str, str], args: list[str]
) -> None:
    """In UTC it is in year 0 or 10000: converting it overflowed (a traceback)."""
    _publish(env, "order.placed", "u1", 1)
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 2, result.output
    assert f"error: {args[2]}: the time is outside the years 1-9999 in UTC" in result.output
    assert "Traceback" not in result.output


def test_another_event_under_a_stored_id_is_refused_not_dropped(env: dict[str, str]) -> None:
    """As POST /v1/events answers 409: the same event again is a duplicate, another
    event under its id exits non-zero saying so, and nothing of it is stored."""
    first = ["publish", "a.b", "--id", "my_1", "--payload", '{"v": 1}']
    assert json.loads(_ok(env, *first).splitlines()[-1]) == {"id": "my_1", "duplicate": False}
    assert json.loads(_ok(env, *first).splitlines()[-1]) == {"id": "my_1", "duplicate": True}
    other = ["publish", "totally.different", "--id", "my_1", "--user-id", "zed"]
    refused = CliRunner().invoke(app, [*other, "--payload", '{"important": true}'], env=env)
    assert refused.exit_code == 1, refused.output
    [error] = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert "already stored with another name, source, user or payload" in error
    assert "Traceback" not in refused.output
    stored = [json.loads(line) for line in _ok(env, "events", "list", "--json").splitlines()]
    assert [(e["id"], e["event_name"], e["payload"]) for e in stored] == [("my_1", "a.b", {"v": 1})]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--payload", '{"x": 99999999999999999999999}'],
            "--payload holds an integer outside the 64-bit range",
        ),
        (["--payload", "[" * 64 + "]" * 64], "--payload nests arrays and objects more than 63"),
        (["--payload", ""], "--payload is empty"),
        (["--source", "razorpay"], "source 'razorpay' is reserved for signed webhooks"),
        (["--source", "system"], "source 'system' is reserved for the service's own events"),
        (["--source", "github"], "source 'github' is reserved for signed webhooks"),
    ],
)
def test_publish_refuses_what_the_api_refuses(
    env: dict[str, str], args: list[str], reason: str
) -> None:
    """The payload is parsed and the event checked as POST /v1/events does (422 there):
    a number that would lose precision, JSON nested too deep inside the event, a source
    reserved for the service or for a configured webhook source."""
    env["EVENTMILL_SOURCES"] = '{"github": {"scheme": "github", "secrets": ["s"]}}'
    result = CliRunner().invoke(app, ["publish", "a.b", *args], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert reason in line
    assert not (Path(env["EVENTMILL_DATA_DIR"]) / "events.db").exists()


def test_publish_names_a_source_that_makes_no_receiver(env: dict[str, str]) -> None:
    env["EVENTMILL_SOURCES"] = '{"empty": {"scheme": "hmac", "secrets": [""]}}'
    result = CliRunner().invoke(app, ["publish", "a.b"], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line == "error: sources.empty: hmac: at least one non-empty secret is required"


def test_read_only_tools_never_create_a_store(env: dict[str, str], tmp_path: Path) -> None:
    for args in (["events", "list"], ["trace", "x"], ["tail", "--count", "1"]):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 1, args
        assert "no store at" in result.output
    assert not (tmp_path / "data").exists()
    assert "store schema at version" in _ok(env, "migrate")
    assert (tmp_path / "data" / "events.db").exists()


def test_replay_lets_a_new_group_catch_up(env: dict[str, str], tmp_path: Path) -> None:
    ids = [_publish(env, "order.placed", f"u{i}", i) for i in range(3)]
    out = _ok(env, "events", "replay", "--topic", "catch-up", "--user-id", "u1")
    assert "replayed 1 event(s) onto 'catch-up'" in out
    out = _ok(env, "events", "replay", "--topic", "catch-up", "--limit", "2")
    assert "more match: continue with --after-position" in out

    async def read() -> list[Message]:
        bus = await open_pubsub(f"sqlite:///{tmp_path / 'data' / 'bus.db'}")
        async with bus:
            sub = await bus.subscribe("catch-up", group="late")  # starts at the oldest
            got = []
            async with asyncio.timeout(10):
                while len(got) < 3:
                    msg = await anext(sub)
                    msg.ack()
                    got.append(msg)
            await sub.close()
            return got

    got = asyncio.run(read())
    assert [m.id for m in got] == [ids[1], ids[0], ids[1]]
    assert {m.metadata["eventmill_replayed"] for m in got} == {"1"}


def test_tail_follows_the_store_from_the_start(env: dict[str, str]) -> None:
    ids = [_publish(env, "order.placed", "u1", i) for i in range(3)]
    out = _ok(env, "tail", "--from-start", "--count", "2", "--interval", "0.05")
    assert [json.loads(line)["id"] for line in out.strip().splitlines()] == ids[:2]


def test_tail_follows_a_topic_live(env: dict[str, str], tmp_path: Path) -> None:
    _ok(env, "migrate")
    proc = subprocess.Popen(
        [str(EVENTMILL), "tail", "--topic", "live", "--count", "1", "--user-id", "u9"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while "following topic" not in proc.stderr.readline():
            assert proc.poll() is None, proc.stderr.read()

        async def send() -> None:
            async with await open_pubsub(f"sqlite:///{tmp_path / 'data' / 'bus.db'}") as bus:
                await bus.publish(
                    "live",
                    Message(b'{"skip": true}', {"user_id": "other"}),
                    Message(b'{"n": 9}', {"user_id": "u9"}),
                )

        asyncio.run(send())
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [line] = out.strip().splitlines()
    assert json.loads(line)["payload"] == {"n": 9}
