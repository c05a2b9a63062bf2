"""The ``eventmill`` command: API keys end to end, and the installed entry point."""

from __future__ import annotations

import asyncio
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
