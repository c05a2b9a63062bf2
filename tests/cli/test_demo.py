"""`eventmill demo` against a running `eventmill serve` on the embedded default: the
webhooks are signed with the development secret, stored, delivered to demo's endpoint
with verified signatures, and traced."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.ingest.support import VENV_BIN, Server


def _env(tmp_path: Path) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTMILL_", "RAZORPAY_", "PUBSUB_"))
    }
    return {**clean, "EVENTMILL_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "80"}


def _eventmill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "eventmill"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_demo_sends_signed_webhooks_and_receives_their_deliveries(tmp_path: Path) -> None:
    env = _env(tmp_path)
    server = Server(env, tmp_path / "serve.log")
    server.start()
    try:
        done = _eventmill(env, "demo", "--url", server.url, "--count", "2")
        assert done.returncode == 0, done.stdout + done.stderr + server.log_text()
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"dashboard: {server.url}/#token=ey")
        sent = [line for line in lines if line.startswith("sent ")]
        delivered = [line for line in lines if line.startswith("delivered ")]
        assert len(sent) == 2
        assert all(line.endswith("-> 200") for line in sent)
        assert len(delivered) == 2
        assert all(line.endswith("signature verified") for line in delivered)
        event_id = re.search(r"(evt_\w+)", sent[0])
        assert event_id is not None

        trace = _eventmill(env, "trace", event_id.group(1), "--json")
        assert trace.returncode == 0, trace.stderr
        hops = [json.loads(line)["hop"] for line in trace.stdout.splitlines()]
        assert {"stored", "published", "handled", "delivery.attempt"} <= set(hops)
    finally:
        server.stop()
    secrets_file = tmp_path / "data" / "dev-secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert "development secrets (Razorpay, JWT)" in server.log_text()


def test_demo_without_a_service_says_what_to_do(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _eventmill(env, "migrate").returncode == 0
    done = _eventmill(env, "demo", "--url", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert "no service at http://127.0.0.1:9: start it first (make serve)" in done.stderr


@pytest.mark.parametrize(
    ("configured", "banner"),
    [
        ({"RAZORPAY_WEBHOOK_SECRET": "whsec-configured-for-this-test"}, "(JWT)"),
        (
            {
                "RAZORPAY_WEBHOOK_SECRET": "whsec-configured-for-this-test",
                "EVENTMILL_JWT__SECRET": "a-configured-jwt-secret-of-32-bytes-or-more",
            },
            None,
        ),
    ],
)
def test_the_banner_names_only_the_development_secrets_in_use(
    tmp_path: Path, configured: dict[str, str], banner: str | None
) -> None:
    server = Server.embedded(tmp_path, EVENTMILL_LOG_LEVEL="info", **configured)
    server.start()
    try:
        log = server.log_text()
    finally:
        server.stop()
    if banner is None:
        assert "development secrets" not in log
    else:
        assert f"development secrets {banner} in" in log
