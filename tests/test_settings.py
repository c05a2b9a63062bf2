"""Settings: environment, config file, defaults, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventmill.errors import ConfigurationError
from eventmill.settings import DEFAULT_MAX_BODY_BYTES, Settings

_ALIASES = {"RAZORPAY_WEBHOOK_SECRET", "PUBSUB_BACKEND", "KAFKA_BROKERS", "REDIS_URL", "NATS_URL"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("EVENTMILL_") or name in _ALIASES:
            monkeypatch.delenv(name)


def test_defaults_are_embedded_under_the_data_dir() -> None:
    s = Settings.load()
    assert s.data_dir == Path("eventmill-data")
    assert s.bus == "sqlite:///eventmill-data/bus.db?synchronous=normal"
    assert s.store == "sqlite+aiosqlite:///eventmill-data/events.db"
    assert s.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1024 * 1024
    assert s.razorpay_webhook_secret == []
    assert s.sources == {}


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVENTMILL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAZORPAY_WEBHOOK_SECRET", "new-secret, old-secret")
    monkeypatch.setenv("EVENTMILL_SOURCES__GH__SCHEME", "github")
    monkeypatch.setenv("EVENTMILL_SOURCES__GH__SECRETS", "a,b")
    monkeypatch.setenv("EVENTMILL_PORT", "9001")
    s = Settings.load()
    assert s.bus == f"sqlite:///{tmp_path / 'bus.db'}?synchronous=normal"
    assert [x.get_secret_value() for x in s.razorpay_webhook_secret] == ["new-secret", "old-secret"]
    assert s.sources["gh"].scheme == "github"
    assert len(s.sources["gh"].secrets) == 2
    assert s.port == 9001
    assert "new-secret" not in repr(s)
    assert "new-secret" not in str(s.model_dump())


def test_config_file_and_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "eventmill.toml"
    config.write_text(
        'bus_url = "memory://"\n'
        "port = 7000\n"
        'razorpay_webhook_secret = "from-file"\n'
        "[sources.acme]\n"
        'scheme = "hmac"\n'
        'secrets = ["s1"]\n'
        'header = "X-Acme-Signature"\n'
    )
    s = Settings.load(config)
    assert s.bus == "memory://"
    assert s.port == 7000
    assert s.sources["acme"].header == "X-Acme-Signature"
    monkeypatch.setenv("EVENTMILL_PORT", "7001")  # the environment wins over the file
    assert Settings.load(config).port == 7001
    monkeypatch.setenv("EVENTMILL_CONFIG", str(config))
    assert Settings.load().bus == "memory://"


def test_invalid_settings_name_the_field_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTMILL_SOURCES__RAZORPAY__SCHEME", "github")
    monkeypatch.setenv("EVENTMILL_SOURCES__RAZORPAY__SECRETS", "topsecret")
    with pytest.raises(ConfigurationError, match=r"source name .razorpay.") as info:
        Settings.load()
    assert "topsecret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="does not exist"):
        Settings.load("/nonexistent/eventmill.toml")
    with pytest.raises(ConfigurationError, match="'/etc' is not a file"):  # a directory
        Settings.load("/etc")
    monkeypatch.delenv("EVENTMILL_SOURCES__RAZORPAY__SCHEME")
    monkeypatch.delenv("EVENTMILL_SOURCES__RAZORPAY__SECRETS")
    monkeypatch.setenv("EVENTMILL_MAX_BODY_BYTES", "0")
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        Settings.load()


@pytest.mark.parametrize(
    ("env", "bus"),
    [
        (
            {"PUBSUB_BACKEND": "kafka", "KAFKA_BROKERS": "kafka:9092, k2:9092"},
            "kafka://kafka:9092,k2:9092",
        ),
        ({"PUBSUB_BACKEND": "redis", "REDIS_URL": "redis://cache:6379/2"}, "redis://cache:6379/2"),
        ({"PUBSUB_BACKEND": "nats", "NATS_URL": "nats://nats:4222"}, "nats://nats:4222"),
        ({"PUBSUB_BACKEND": "memory"}, "memory://"),
        (
            {"PUBSUB_BACKEND": "postgres", "EVENTMILL_STORE_URL": "postgresql://u@db/app"},
            "postgresql://u@db/app",
        ),
        (
            {"PUBSUB_BACKEND": "redis", "REDIS_URL": "redis://x", "EVENTMILL_BUS_URL": "memory://"},
            "memory://",
        ),
    ],
)
def test_the_system_descriptions_names_pick_the_bus(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], bus: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.load().bus == bus


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"PUBSUB_BACKEND": "kafka"}, "KAFKA_BROKERS"),
        ({"PUBSUB_BACKEND": "postgres"}, "EVENTMILL_STORE_URL"),
        ({"PUBSUB_BACKEND": "rabbit"}, "pubsub_backend"),
    ],
)
def test_an_incomplete_backend_choice_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=match):
        Settings.load()


def test_a_config_file_named_in_the_environment_must_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``EVENTMILL_CONFIG`` naming no file (a typo, a missing mount) is an error, as
    ``--config`` is: silently running on the defaults would be the surprise."""
    for named in (tmp_path / "nosuch.toml", tmp_path):
        monkeypatch.setenv("EVENTMILL_CONFIG", str(named))
        with pytest.raises(ConfigurationError, match="EVENTMILL_CONFIG"):
            Settings.load()


def test_a_config_file_that_is_not_toml_and_bad_json_in_a_variable_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        Settings.load(bad)
    monkeypatch.setenv("EVENTMILL_SOURCES", "{bad")
    with pytest.raises(ConfigurationError, match="sources"):
        Settings.load()


def test_an_unknown_setting_in_the_config_file_is_named(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('prot = 9999\nbus_ulr = "memory://"\nport = 8081\n')
    with pytest.raises(ConfigurationError, match="'bus_ulr', 'prot'"):
        Settings.load(typo)


def test_a_config_file_that_is_not_utf8_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """TOML is UTF-8 text: other bytes are a ConfigurationError naming the file (the CLI
    exits 2 with it), not a UnicodeDecodeError."""
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'port = 8081\nname = "\xff\xfe"\n')
    with pytest.raises(ConfigurationError, match=r"bin\.toml' is not valid TOML: not UTF-8"):
        Settings.load(binary)
    monkeypatch.setenv("EVENTMILL_CONFIG", str(binary))
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        Settings.load()
