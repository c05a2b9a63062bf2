"""``eventmill serve``: a setting that would fail the app's build or start stops it at
once, exit 2, with one line naming the setting (never a secret, never a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventmill.cli import app

SECRET = "whsec_not_to_be_shown"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "EVENTMILL_PORT": "0"}


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        (
            "EVENTMILL_SOURCES",
            '{"empty": {"scheme": "hmac", "secrets": ["' + SECRET + '", ""]}}',
            "sources.empty: hmac: at least one non-empty secret is required",
        ),
        ("EVENTMILL_JWT__PUBLIC_KEY", "garbage", "jwt: jwt.public_key is neither a PEM"),
        (
            "EVENTMILL_DELIVERY__BUILDERS",
            '{"a.*": "nosuchmod:fn"}',
            "delivery.builders['a.*']: payload builder 'nosuchmod:fn': cannot import nosuchmod",
        ),
        ("EVENTMILL_DATA_DIR", "/proc/forbidden", "data_dir: cannot create /proc/forbidden"),
        ("EVENTMILL_BUS_URL", "bogus://x", "bus_url: unknown pub/sub URL 'bogus://x'"),
    ],
)
def test_a_setting_that_cannot_work_stops_serve_with_one_line(
    env: dict[str, str], setting: str, value: str, reason: str
) -> None:
    """An unknown bus scheme can never connect: refused, not retried (a known one whose
    server is down is retried, as ever)."""
    env[setting] = value
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: {reason}" or line.startswith(f"error: {reason}")
    assert SECRET not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'a = "\xff\xfe"\n')
    for args in (["keys", "list"], ["serve"]):
        result = CliRunner().invoke(app, [*args, "--config", str(binary)], env=env)
        assert result.exit_code == 2, result.output
        [line] = result.stderr.strip().splitlines()
        assert line == (
            f"error: config file '{binary}' is not valid TOML: not UTF-8 text (at byte 5)"
        )
