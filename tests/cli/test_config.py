"""config show (values, origins, secrets masked) and config check (names what is wrong)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from eventmill.cli import app

SECRET = "rzp_top_secret_value"


def _rows(output: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 3:
            found[cells[0]] = (cells[1], cells[2])
    return found


def test_show_names_each_values_origin_and_masks_secrets(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "eventmill.toml"
    config.write_text("relay_batch_size = 42\n[delivery]\ntimeout_seconds = 3.0\n")
    env.update(
        RAZORPAY_WEBHOOK_SECRET=SECRET,
        EVENTMILL_PORT="9100",
        EVENTMILL_STORE_URL="postgresql://app:hunter2@db/events",
        EVENTMILL_DELIVERY__RETRY_SCHEDULE="[1, 2]",
    )
    result = CliRunner().invoke(app, ["config", "show", "--config", str(config)], env=env)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "hunter2" not in result.output
    rows = _rows(result.stdout)
    assert rows["razorpay_webhook_secret"] == ("**********", "env RAZORPAY_WEBHOOK_SECRET")
    assert rows["port"] == ("9100", "env EVENTMILL_PORT")
    assert rows["store_url"] == ("postgresql://app:***@db/events", "env EVENTMILL_STORE_URL")
    assert rows["delivery.retry_schedule"] == (
        "[1.0, 2.0]",
        "env EVENTMILL_DELIVERY__RETRY_SCHEDULE",
    )
    assert rows["relay_batch_size"] == ("42", f"file {config}")
    assert rows["delivery.timeout_seconds"] == ("3.0", f"file {config}")
    assert rows["host"] == ("127.0.0.1", "default")


def test_check_passes_a_valid_configuration(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 0, result.output
    assert "configuration is valid" in result.output


def test_check_names_every_setting_that_is_wrong(env: dict[str, str]) -> None:
    env.update(
        EVENTMILL_BUS_URL="redis://127.0.0.1:6379?bogus=1",
        EVENTMILL_STORE_URL="sqlite:///x.db?pool_size=many",
        EVENTMILL_JWT__PUBLIC_KEY="/no/such/key.pem",
        EVENTMILL_DELIVERY__BUILDERS='{"order.*": "no_such_module:build"}',
    )
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 2
    out = result.output
    assert "bus_url: unknown redis:// option 'bogus'" in out
    assert "store_url:" in out
    assert "jwt: jwt.public_key is neither a PEM public key" in out
    assert "delivery.builders['order.*']: payload builder" in out
    assert "4 setting(s) are not valid" in out


def test_check_refuses_settings_that_do_not_load(env: dict[str, str]) -> None:
    env.update(EVENTMILL_PORT="99999", EVENTMILL_JWT__SECRET="short")
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 2
    assert "port" in result.output
    assert "jwt" in result.output
    assert "short" not in result.output


def test_check_names_a_source_whose_secret_is_empty(env: dict[str, str]) -> None:
    """A source's secrets load (a list), but an empty one makes no receiver: check says
    which source, never the other secrets."""
    env["EVENTMILL_SOURCES"] = '{"empty": {"scheme": "hmac", "secrets": ["' + SECRET + '", ""]}}'
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 2, result.output
    assert "sources.empty: hmac: at least one non-empty secret is required" in result.output
    assert SECRET not in result.output


def test_check_names_a_data_dir_that_cannot_be_made(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    env["EVENTMILL_DATA_DIR"] = str(tmp_path / "a-file" / "data")
    result = CliRunner().invoke(app, ["config", "check"], env=env)
    assert result.exit_code == 2, result.output
    assert f"data_dir: {tmp_path / 'a-file'} is not a directory" in result.output
