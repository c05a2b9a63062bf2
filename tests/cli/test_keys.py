"""``eventmill keys``: what a key's name may hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventmill.cli import app


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "bell\x07", "del\x7f"])
def test_a_key_name_with_a_control_character_is_refused(
    env: dict[str, str], tmp_path: Path, name: str
) -> None:
    """A line break (or any control character) in a name would break every listing of
    the keys: refused in one line, exit 2, and no store is created for it."""
    result = CliRunner().invoke(app, ["keys", "create", name, "--scope", "read"], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: API key name must not hold control characters")
    assert not (tmp_path / "data").exists()


def test_a_key_name_is_listed_as_given(env: dict[str, str]) -> None:
    """Brackets in a name are text, not markup for the table."""
    name = "ops [red]team[/red] ünïcode"
    created = CliRunner().invoke(app, ["keys", "create", name, "--scope", "read"], env=env)
    assert created.exit_code == 0, created.output
    listing = CliRunner().invoke(app, ["keys", "list"], env=env)
    assert listing.exit_code == 0, listing.output
    assert name in listing.stdout
