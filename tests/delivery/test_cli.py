"""``eventmill endpoints …`` and ``eventmill deliveries …`` against a SQLite store."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventmill.cli import app


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "EVENTMILL_DATA_DIR": str(tmp_path / "data"),
        "EVENTMILL_STORE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "COLUMNS": "250",
    }


def test_endpoint_lifecycle(env: dict[str, str]) -> None:
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "endpoints",
            "create",
            "https://example.com/hook",
            "-u",
            "u1",
            "-e",
            "order.*",
            "-H",
            "X-Team: payments",
        ],
        env=env,
    )
    assert made.exit_code == 0, made.output
    endpoint_id = re.search(r"id:\s+(ep_\w+)", made.output).group(1)  # type: ignore[union-attr]
    assert "secret: whsec_" in made.output
    listed = runner.invoke(app, ["endpoints", "list", "-u", "u1"], env=env)
    assert endpoint_id in listed.output
    assert "whsec_" not in listed.output
    as_json = runner.invoke(app, ["endpoints", "list", "-u", "u1", "--json"], env=env)
    [record] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (record["id"], record["url"], record["user_id"]) == (
        endpoint_id,
        "https://example.com/hook",
        "u1",
    )
    assert record["event_types"] == ["order.*"]
    assert "whsec_" not in as_json.output
    rotated = runner.invoke(app, ["endpoints", "rotate-secret", endpoint_id], env=env)
    assert rotated.exit_code == 0
    assert "secret: whsec_" in rotated.output
    assert runner.invoke(app, ["endpoints", "disable", endpoint_id], env=env).exit_code == 0
    assert runner.invoke(app, ["endpoints", "enable", endpoint_id], env=env).exit_code == 0
    recovered = runner.invoke(
        app, ["endpoints", "recover", endpoint_id, "--since", "2020-01-01T00:00:00"], env=env
    )
    assert "requeued 0" in recovered.output
    assert (
        runner.invoke(app, ["deliveries", "list", "--endpoint", endpoint_id], env=env).exit_code
        == 0
    )
    missing = runner.invoke(app, ["deliveries", "show", "dlv_nope"], env=env)
    assert missing.exit_code == 1
    assert "no delivery" in missing.output
    assert runner.invoke(app, ["endpoints", "delete", endpoint_id], env=env).exit_code == 0
    again = runner.invoke(app, ["endpoints", "delete", endpoint_id], env=env)
    assert again.exit_code == 1


def test_bad_input_is_a_clear_error(env: dict[str, str]) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["endpoints", "create", "ftp://example.com"], env=env)
    assert bad.exit_code == 2
    assert "http" in bad.output
    bad = runner.invoke(app, ["endpoints", "create", "https://x.test", "-H", "nocolon"], env=env)
    assert bad.exit_code == 2


def test_retry_of_a_delivery_an_attempt_holds_says_so(env: dict[str, str]) -> None:
    """A delivery leased to an attempt (as the dispatcher leases it) is not requeued by
    `deliveries retry`: exit 1 and where its outcome shows; once free, it is queued."""
    from datetime import UTC, datetime, timedelta

    from eventmill.delivery._ids import new_id
    from eventmill.delivery.store import DeliveryStore, FanoutEvent, NewDelivery
    from eventmill.store import open_store

    async def leased_delivery(token: str | None) -> str:
        store = await open_store(env["EVENTMILL_STORE_URL"])
        try:
            ds = DeliveryStore(store)
            endpoint = await ds.create_endpoint(url="https://example.com/hook", user_id="u1")
            event_id = new_id("evt")
            delivery_id = new_id("dlv")
            # a leased row is due again when its lease ends, if its attempt never reports
            due = datetime.now(UTC) + timedelta(seconds=600 if token else 0)
            row = NewDelivery(delivery_id, event_id, endpoint.id, "u1", "x.y", due, token)
            await ds.record_fanout([FanoutEvent(event_id, "x.y", "u1", b"{}")], [row])
            return delivery_id
        finally:
            await store.close()

    runner = CliRunner()
    held = asyncio.run(leased_delivery("lease-of-an-attempt"))
    refused = runner.invoke(app, ["deliveries", "retry", held], env=env)
    assert refused.exit_code == 1, refused.output
    assert "being sent right now" in refused.output
    assert f"eventmill deliveries show {held}" in refused.output
    free = asyncio.run(leased_delivery(None))
    queued = runner.invoke(app, ["deliveries", "retry", free], env=env)
    assert queued.exit_code == 0, queued.output
    assert f"queued {free}" in queued.output

    # --json: the API's shapes, one object per line
    listed = runner.invoke(app, ["deliveries", "list", "--json"], env=env)
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted([held, free])
    assert {r["status"] for r in records} == {"pending"}
    shown = runner.invoke(app, ["deliveries", "show", held, "--json"], env=env)
    [detail] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (detail["id"], detail["attempts"], detail["history"]) == (held, 0, [])


def test_endpoint_commands_say_what_is_wrong(env: dict[str, str]) -> None:
    """Each bad option named with the API's reason; an unknown endpoint is exit 1; a
    disabled one is not recovered; rotation overlaps bounded as the API bounds them."""
    runner = CliRunner()
    for args, words in [
        (["-e", "a b"], "--event-type: invalid event name pattern"),
        (["--rate-limit", "-1"], "--rate-limit: "),
        (["-H", "webhook-id: x"], "--header: header 'webhook-id' is set by eventmill"),
        (["-H", "X-A: b", "-H", "x-a: c"], "given twice"),
    ]:
        bad = runner.invoke(app, ["endpoints", "create", "https://example.com/h", *args], env=env)
        assert bad.exit_code == 2, bad.output
        assert words in bad.output, bad.output
        assert "errors.pydantic.dev" not in bad.output

    made = runner.invoke(app, ["endpoints", "create", "https://example.com/h"], env=env)
    endpoint_id = re.search(r"id:\s+(ep_\w+)", made.output).group(1)  # type: ignore[union-attr]
    missing = runner.invoke(
        app, ["endpoints", "recover", "ep_nope", "--since", "2020-01-01T00:00:00"], env=env
    )
    assert missing.exit_code == 1
    assert "no endpoint with id 'ep_nope'" in missing.output
    for overlap in ("-5", "1e12", "2592001"):
        refused = runner.invoke(
            app, ["endpoints", "rotate-secret", endpoint_id, "--overlap", overlap], env=env
        )
        assert refused.exit_code == 2, refused.output
        assert "Traceback" not in refused.output
    first = runner.invoke(app, ["endpoints", "rotate-secret", endpoint_id], env=env)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["endpoints", "rotate-secret", endpoint_id], env=env)
    assert second.exit_code == 1, second.output
    assert "--overlap 0" in second.output
    cut = runner.invoke(app, ["endpoints", "rotate-secret", endpoint_id, "--overlap", "0"], env=env)
    assert cut.exit_code == 0, cut.output
    assert "old secret signs until: no longer" in cut.output

    assert runner.invoke(app, ["endpoints", "disable", endpoint_id], env=env).exit_code == 0
    parked = runner.invoke(
        app, ["endpoints", "recover", endpoint_id, "--since", "2020-01-01T00:00:00"], env=env
    )
    assert parked.exit_code == 1
    assert f"eventmill endpoints enable {endpoint_id}" in parked.output


def test_a_loopback_url_is_taken_where_serve_takes_it(tmp_path: Path) -> None:
    """On the embedded default ``serve`` (and POST /v1/endpoints) take a loopback URL;
    ``endpoints create`` refused it ("127.0.0.1 is a loopback address"). With the
    development defaults off, both refuse it."""
    embedded = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTMILL_") and k != "RAZORPAY_WEBHOOK_SECRET"
    }
    embedded["EVENTMILL_DATA_DIR"] = str(tmp_path / "data")
    create = ["endpoints", "create", "http://127.0.0.1:9/hook", "-u", "u1"]
    made = CliRunner().invoke(app, create, env=embedded)
    assert made.exit_code == 0, made.output
    strict = {**embedded, "EVENTMILL_DEV_SECRETS": "false"}
    refused = CliRunner().invoke(app, create, env=strict)
    assert refused.exit_code == 2, refused.output
    assert "loopback" in refused.output
