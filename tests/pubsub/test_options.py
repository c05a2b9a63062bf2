"""The one URL-option parser: values read by the config field's type, clear errors."""

from __future__ import annotations

import pytest

from eventmill import ConfigurationError
from eventmill.pubsub.kafka import KafkaConfig
from eventmill.pubsub.memory import MemoryConfig
from eventmill.pubsub.nats import NatsConfig
from eventmill.pubsub.postgres import PostgresConfig
from eventmill.pubsub.redis import RedisConfig
from eventmill.pubsub.sqlite import SQLiteConfig


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("0.5", 0.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0)],
)
def test_durations_take_seconds_or_a_unit(text: str, seconds: float) -> None:
    cfg = SQLiteConfig.from_url(f"sqlite:///b.db?visibility_timeout={text}&retention=7d")
    assert cfg.visibility_timeout == seconds
    assert cfg.retention == 7 * 86400.0


def test_unlimited_is_the_one_word_for_no_limit_on_every_backend() -> None:
    assert SQLiteConfig.from_url("sqlite:///b.db?retention=unlimited").retention is None
    assert SQLiteConfig.from_url("sqlite:///b.db?max_age=UNLIMITED").max_age is None
    assert PostgresConfig.from_url("postgresql://h/db?retention=unlimited").retention is None
    assert RedisConfig.from_url("redis://h?maxlen=unlimited").maxlen is None
    nats = NatsConfig.from_url(
        "nats://h?max_age=unlimited&max_msgs=unlimited&max_bytes=unlimited&max_deliver=unlimited"
    )
    assert (nats.max_age, nats.max_msgs, nats.max_bytes, nats.max_deliver) == (None,) * 4


def test_choices_and_flags_are_read_in_any_case() -> None:
    assert MemoryConfig.from_url("memory://?when_full=RAISE").when_full == "raise"
    assert NatsConfig.from_url("nats://h?storage=Memory&dedupe=No").storage == "memory"
    assert NatsConfig.from_url("nats://h?dedupe=yes").dedupe is True


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("memory://?buffer_size=1.5", ["buffer_size", "an integer", "'1.5'"]),
        ("memory://?when_full=drop", ["when_full", "'block', 'raise'", "'drop'"]),
        ("sqlite:///b.db?poll_interval=soon", ["poll_interval", "a duration", "'soon'"]),
        ("sqlite:///b.db?retention=forever", ["retention", "'unlimited'", "'forever'"]),
        ("nats://h?dedupe=maybe", ["dedupe", "true or false"]),
        ("kafka://h:1?partitions=x", ["partitions", "an integer"]),
        ("redis://h?claim_idle=nan", ["claim_idle", "a duration"]),
    ],
)
def test_a_bad_value_names_the_option_and_what_it_expects(url: str, words: list[str]) -> None:
    parse = {
        "memory": MemoryConfig.from_url,
        "sqlite": SQLiteConfig.from_url,
        "nats": NatsConfig.from_url,
        "kafka": KafkaConfig.from_url,
        "redis": RedisConfig.from_url,
    }[url.split(":", 1)[0]]
    with pytest.raises(ConfigurationError) as info:
        parse(url)
    for word in words:
        assert word in str(info.value)


def test_an_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown memory:// option 'colour'") as info:
        MemoryConfig.from_url("memory://?colour=blue")
    assert "buffer_size" in str(info.value)
    assert "when_full" in str(info.value)


@pytest.mark.parametrize(
    ("url", "parse", "new"),
    [
        ("postgresql://h/db?backoff_max=1", PostgresConfig.from_url, "reconnect_max_delay"),
        ("kafka://h:1?reconnect_backoff_max=1", KafkaConfig.from_url, "reconnect_max_delay"),
        ("kafka://h:1?reconnect_backoff_min=1", KafkaConfig.from_url, "reconnect_min_delay"),
        ("nats://h?reconnect_max_wait=1", NatsConfig.from_url, "reconnect_max_delay"),
        ("nats://h?reconnect_wait=1", NatsConfig.from_url, "reconnect_min_delay"),
        ("nats://h?max_ack_pending=10", NatsConfig.from_url, "max_unsettled"),
        ("redis://h?max_in_flight=10", RedisConfig.from_url, "max_unsettled"),
        ("kafka://h:1?max_in_flight=10", KafkaConfig.from_url, "max_unsettled"),
    ],
)
def test_a_renamed_option_says_its_new_name(url: str, parse: object, new: str) -> None:
    assert callable(parse)
    with pytest.raises(ConfigurationError, match=f"now called {new}"):
        parse(url)


def test_fields_a_url_sets_otherwise_are_no_options() -> None:
    with pytest.raises(ConfigurationError, match="unknown sqlite:// option 'path'"):
        SQLiteConfig.from_url("sqlite:///b.db?path=/etc/passwd")
    with pytest.raises(ConfigurationError, match="unknown postgresql:// option 'dsn'"):
        PostgresConfig.from_url("postgresql://h/db?dsn=postgresql://elsewhere/db")


def test_the_cap_of_the_reconnect_backoff_has_one_name_everywhere() -> None:
    for cfg in (
        PostgresConfig.from_url("postgresql://h/db?reconnect_max_delay=0.5"),
        RedisConfig.from_url("redis://h?reconnect_max_delay=0.5"),
        NatsConfig.from_url("nats://h?reconnect_max_delay=0.5"),
        KafkaConfig.from_url("kafka://h:1?reconnect_max_delay=0.5"),
    ):
        assert cfg.reconnect_max_delay == 0.5


_EVERY_BACKEND = {
    "memory://": MemoryConfig.from_url,
    "sqlite:///b.db": SQLiteConfig.from_url,
    "postgresql://h/db": PostgresConfig.from_url,
    "redis://h": RedisConfig.from_url,
    "nats://h": NatsConfig.from_url,
    "kafka://h:1": KafkaConfig.from_url,
}


@pytest.mark.parametrize("base", list(_EVERY_BACKEND))
def test_the_bound_on_unsettled_messages_has_one_name_and_default_everywhere(base: str) -> None:
    parse = _EVERY_BACKEND[base]
    sep = "&" if "?" in base else "?"
    default = parse(base)
    assert default.max_unsettled == 1000  # type: ignore[attr-defined]
    assert default.stall_warning == 30.0  # type: ignore[attr-defined]
    cfg = parse(f"{base}{sep}max_unsettled=5&stall_warning=2m")
    assert (cfg.max_unsettled, cfg.stall_warning) == (5, 120.0)  # type: ignore[attr-defined]
    cfg = parse(f"{base}{sep}max_unsettled=unlimited&stall_warning=unlimited")
    assert (cfg.max_unsettled, cfg.stall_warning) == (None, None)  # type: ignore[attr-defined]
    for bad in ("max_unsettled=0", "max_unsettled=-1", "stall_warning=0"):
        with pytest.raises(ConfigurationError, match=bad.split("=")[0]):
            parse(f"{base}{sep}{bad}")


_BACKEND_PAGES = {
    "memory": (MemoryConfig, "memory://"),
    "sqlite": (SQLiteConfig, "sqlite:///bus.db"),
    "postgresql": (PostgresConfig, "postgresql://postgres@127.0.0.1:5432/test"),
    "redis": (RedisConfig, "redis://127.0.0.1:6379/0"),
    "nats": (NatsConfig, "nats://127.0.0.1:4222"),
    "kafka": (KafkaConfig, "kafka://127.0.0.1:9092"),
}


def _documented_defaults() -> list[tuple[str, str, str]]:
    """(page, option, default) of every option-table row whose default is one value."""
    import re
    from pathlib import Path

    row = re.compile(
        r"^\| (?P<names>`[a-z_]+`(?: / `[a-z_]+`)*) \| `(?P<value>[^`|]+)`(?: \([^|]*\))? \|"
    )
    docs = Path(__file__).resolve().parents[2] / "docs" / "library" / "backends"
    found = []
    for page in _BACKEND_PAGES:
        for line in (docs / f"{page}.md").read_text().splitlines():
            match = row.match(line)
            if match is None:
                continue
            for name in re.findall(r"`([a-z_]+)`", match["names"]):
                found.append((page, name, match["value"]))
    return found


@pytest.mark.parametrize(("page", "name", "value"), _documented_defaults())
def test_each_documented_default_is_the_options_default(page: str, name: str, value: str) -> None:
    """The backend pages' option tables show each default as the URL would give it: it
    parses, to the value the option has when not given."""
    cls, base = _BACKEND_PAGES[page]
    given = cls.from_url(f"{base}?{name}={value}")
    assert getattr(given, name) == getattr(cls.from_url(base), name), (page, name, value)
