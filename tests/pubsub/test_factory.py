"""``redact_url``: what a URL shows in logs, errors, ``/readyz`` and ``config show``."""

from __future__ import annotations

import pytest

from eventmill.pubsub.factory import redact_url
from eventmill.store.config import StoreConfig


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://NTOKSEKRIT@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # token auth
        ("nats://bob:SEKRIT@127.0.0.1:4222", "nats://bob:***@127.0.0.1:4222"),
        ("tls://NTOKSEKRIT@nats.example:4222", "tls://***@nats.example:4222"),
        ("redis://:SEKRIT@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        (
            "postgresql://app@db/app?sslmode=require&password=SEKRIT",
            "postgresql://app@db/app?sslmode=require&password=***",
        ),
        ("redis://app@127.0.0.1:6379/0", "redis://app@127.0.0.1:6379/0"),  # a user is no secret
        ("sqlite:///data/events.db", "sqlite:///data/events.db"),
        ("memory://", "memory://"),
    ],
)
def test_credentials_are_masked_and_nothing_else(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SEKRIT" not in redact_url(url)


def test_the_store_shows_its_url_the_same_way() -> None:
    url = "postgresql://app:SEKRIT@db/app?password=SEKRIT2"
    assert StoreConfig.from_url(url).redacted().endswith("://app:***@db/app?password=***")
