"""``eventmill endpoints …`` and ``eventmill deliveries …`` against a SQLite store."""

from __future__ import annotations

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
