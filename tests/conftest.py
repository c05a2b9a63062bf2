"""Shared test helpers: real services are required in CI, skipped (with a reason) elsewhere."""

from __future__ import annotations

import os
import socket

import pytest

# pytest-xdist's workers inherit COLUMNS from the controller; rich reads it once, when
# the CLI is imported, and would keep that width for every in-process CLI test. Each CLI
# test sets the width it needs in its own environment, as in a one-process run.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

REQUIRE_SERVICES = os.environ.get("EVENTMILL_REQUIRE_SERVICES", "") not in ("", "0", "false")


def service_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test if ``host:port`` is unreachable, or fail under EVENTMILL_REQUIRE_SERVICES=1."""
    if service_reachable(host, port):
        return
    reason = f"{name} is not reachable at {host}:{port}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} and EVENTMILL_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
