"""The ``eventmill`` command: API keys end to end, and the installed entry point."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventmill.cli import app
from tests.ingest.support import VENV_BIN, running_app, settings_for, store_url

__all__ = ["store_url"]  # the fixture: SQLite and PostgreSQL stores

runner = CliRunner()


def _cli(store: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"EVENTMILL_STORE_URL": store})
    return result.exit_code, result.stdout, result.stderr


async def _acli(store: str, *args: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop, as from a shell)."""
    return await asyncio.to_thread(_cli, store, *args)


async def test_keys_create_list_revoke(tmp_path: Path, store_url: str) -> None:
    code, out, err = await _acli(store_url, "keys", "create", "billing", "--scope", "publish")
    assert code == 0, out + err
    key = re.search(r"key:\s+(em_\S+)", out)
    key_id = re.search(r"id:\s+(\S+)", out)
    assert key is not None
    assert key_id is not None
    secret, kid = key.group(1), key_id.group(1)
    assert "cannot be shown again" in err

    code, listing, _ = await _acli(store_url, "keys", "list")
    assert code == 0
    assert kid in listing
    assert "billing" in listing
    assert secret not in listing
    assert secret.split("_", 2)[2] not in listing  # em_<id>_<secret>; the secret may hold "_"

    event = {
        "event_name": "invoice.sent",
        "user_id": "u1",
        "payload": {"invoice": "inv_1"},
    }
    auth = {"Authorization": f"Bearer {secret}"}
    async with running_app(settings_for(tmp_path, store_url)) as (_, client):
        ok = await client.post("/v1/events", json=event, headers=auth)
        assert ok.status_code == 200, ok.text
        wrong_scope = await client.get("/v1/events", headers=auth)
        assert wrong_scope.status_code == 403

        code, out, err = await _acli(store_url, "keys", "revoke", kid)
        assert code == 0, out + err
        revoked = await client.post("/v1/events", json=event, headers=auth)
        assert revoked.status_code == 401
        assert secret not in revoked.text

    code, _, err = await _acli(store_url, "keys", "revoke", kid)
    assert code == 1
    assert "no active key" in err
    code, listing, _ = await _acli(store_url, "keys", "list")
    assert kid in listing
    code, listing, _ = await _acli(store_url, "keys", "list", "--json")
    assert code == 0
    [record] = [json.loads(line) for line in listing.splitlines()]
    assert record["id"] == kid
    assert (record["name"], record["scopes"]) == ("billing", ["publish"])
    assert record["created_at"].endswith("Z")
    assert record["revoked_at"].endswith("Z")
    assert secret.split("_", 2)[2] not in listing


def test_bad_scope_and_bad_config_exit_2(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    code, _, err = _cli(store, "keys", "create", "x", "--scope", "write")
    assert code == 2
    assert "unknown scope" in err
    result = runner.invoke(
        app, ["keys", "list", "--config", str(tmp_path / "missing.toml")], env={}
    )
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_error_messages_keep_long_paths_and_brackets_whole(tmp_path: Path) -> None:
    """An error is one unwrapped line: a long path stays copyable, and text in [brackets]
    is printed, not taken for markup."""
    missing = tmp_path / ("a-rather-long-directory-name-" * 4) / "[prod] settings.toml"
    result = runner.invoke(app, ["keys", "list", "--config", str(missing)], env={})
    assert result.exit_code == 2
    assert f"'{missing}' does not exist" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["keys", "create", "--help"]])
def test_installed_entry_point(args: list[str]) -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "eventmill"), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: eventmill" in proc.stdout
    if args[0] == "serve":
        assert "--host" in proc.stdout
        assert "--port" in proc.stdout


def test_a_read_only_command_never_creates_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys list` run from a directory without a store says which store it looked for
    and how to name another; it creates nothing there."""
    for name in ("EVENTMILL_STORE_URL", "EVENTMILL_DATA_DIR", "EVENTMILL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    expected = elsewhere / "eventmill-data" / "events.db"
    for args in (["keys", "list"], ["keys", "revoke", "0123456789ab"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert f"store: sqlite+aiosqlite:///{expected}" in result.stderr
        assert f"no store at {expected}" in result.stderr
        assert "EVENTMILL_STORE_URL" in result.stderr
        assert list(elsewhere.iterdir()) == []

    # creating a key creates the store, and says where; then list finds it
    result = runner.invoke(app, ["keys", "create", "svc", "--scope", "publish"])
    assert result.exit_code == 0, result.output
    assert f"store: sqlite+aiosqlite:///{expected}" in result.stderr
    assert expected.is_file()
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 0, result.output
    assert "svc" in result.stdout
    assert f"store: sqlite+aiosqlite:///{expected}" in result.stderr


def test_commands_name_a_postgresql_store_without_its_password() -> None:
    from tests.ingest.support import pg_store_url

    with pg_store_url() as url:
        with_password = url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
        code, _, err = _cli(with_password, "keys", "list")
        assert code == 0, err
        assert "store: postgresql://postgres:***@127.0.0.1:5432/test?schema=" in err
        assert "hunter2" not in err


def test_serve_says_where_the_docs_are_and_how_to_begin(tmp_path: Path) -> None:
    from tests.ingest.support import Server

    env = {
        "EVENTMILL_DATA_DIR": str(tmp_path / "data"),
        "EVENTMILL_BUS_URL": "memory://",
        "EVENTMILL_STORE_URL": f"sqlite:///{tmp_path / 'events.db'}",
        "RAZORPAY_WEBHOOK_SECRET": "",
        "EVENTMILL_RAZORPAY_WEBHOOK_SECRET": "",
        "EVENTMILL_SOURCES": '{"github": {"scheme": "github", "secrets": ["s"]}}',
        "EVENTMILL_LOG_LEVEL": "warning",
        "EVENTMILL_DEV_SECRETS": "false",
    }
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        text = server.log_text()
    finally:
        server.stop()
    assert f"API docs   {server.url}/docs" in text
    assert "webhooks   POST /webhooks/github" in text
    assert "Razorpay is off: set RAZORPAY_WEBHOOK_SECRET=" in text
    assert f"{VENV_BIN / 'eventmill'}" in text or ".venv/bin/eventmill keys create" in text
    assert "keys create <name> --scope publish --scope read" in text
