"""Development secrets for the embedded default, so a newcomer's service works at once.

On the embedded default — the store is a SQLite file in ``data_dir`` — and with
``dev_secrets`` on (the default), ``eventmill serve`` and ``eventmill demo`` fill what
is not configured with development values kept in ``<data_dir>/dev-secrets.json``
(created on first use, readable by its owner only):

* a Razorpay webhook secret (so ``POST /webhooks/razorpay`` is on, and ``demo`` can
  sign its sample webhooks with it);
* a JWT secret (so the dashboard, ``/ws`` and ``/sse`` accept tokens ``demo`` mints);
* loopback destinations for outbound webhooks (so a receiver on 127.0.0.1 — ``demo``'s
  own — gets deliveries; the SSRF guard refuses them otherwise).

Anything configured (``RAZORPAY_WEBHOOK_SECRET``, ``EVENTMILL_JWT__…``,
``EVENTMILL_DELIVERY__ALLOW_NETWORKS``) wins; a PostgreSQL store never gets them; and
``EVENTMILL_DEV_SECRETS=false`` turns them off. The service binds 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from eventmill.settings import Settings

__all__ = [
    "DEV_SECRETS_FILE",
    "applies",
    "load_dev_secrets",
    "with_dev_networks",
    "with_dev_secrets",
]

DEV_SECRETS_FILE = "dev-secrets.json"
_LOOPBACK = ["127.0.0.0/8", "::1/128"]


def applies(settings: Settings) -> bool:
    """Whether development secrets are used: on, and the store is embedded."""
    return settings.dev_secrets and settings.store.startswith("sqlite") and settings.uses_data_dir()


def load_dev_secrets(settings: Settings, *, create: bool) -> dict[str, str] | None:
    """The development secrets of ``settings.data_dir`` (made when missing and ``create``)."""
    path = settings.data_dir / DEV_SECRETS_FILE
    if path.is_file():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return data
    if not create:
        return None
    data = {
        "razorpay_webhook_secret": "dev_" + secrets.token_urlsafe(24),
        "jwt_secret": secrets.token_urlsafe(48),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    return data


def dev_secrets_path(settings: Settings) -> Path:
    """Where the development secrets of ``settings`` are kept."""
    return settings.data_dir / DEV_SECRETS_FILE


def with_dev_secrets(settings: Settings, *, create: bool = True) -> Settings:
    """``settings`` with what is not configured filled from the development secrets,
    when they apply (see the module docstring); else ``settings`` unchanged."""
    if not applies(settings):
        return settings
    found = load_dev_secrets(settings, create=create)
    if found is None:
        return with_dev_networks(settings)
    update: dict[str, object] = {}
    if not settings.razorpay_webhook_secret:
        update["razorpay_webhook_secret"] = [SecretStr(found["razorpay_webhook_secret"])]
    if not settings.jwt.configured:
        update["jwt"] = settings.jwt.model_copy(update={"secret": SecretStr(found["jwt_secret"])})
    return with_dev_networks(settings.model_copy(update=update) if update else settings)


def with_dev_networks(settings: Settings) -> Settings:
    """``settings`` with loopback outbound destinations allowed where the embedded
    default allows them (``delivery.allow_networks`` unset): what ``serve`` accepts, so
    the CLI accepts the same endpoint URLs; else ``settings`` unchanged."""
    if not applies(settings) or settings.delivery.allow_networks:
        return settings
    delivery = settings.delivery.model_copy(update={"allow_networks": _LOOPBACK})
    return settings.model_copy(update={"delivery": delivery})
