"""A private redis-server for tests that stop and restart the server.

Runs on a free port in a temporary directory with an append-only file fsynced on
every write (``appendfsync always``), so whatever Redis acknowledged survives even
a ``SIGKILL``. Never touches the shared 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port, service_reachable

__all__ = ["RedisServer", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` (PATH or /usr/bin, /usr/sbin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if Path(candidate).exists():
            return candidate
    return None


class RedisServer:
    """``redis-server`` on ``127.0.0.1:<free port>``; call :meth:`stop` when done."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventmill-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not service_reachable("127.0.0.1", self.port, timeout=0.2):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start within 15s")
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a power cut would."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self._proc = None

    async def restart(self, down_for: float) -> None:
        """Kill the server, keep it down ``down_for`` seconds, start it again on the same port."""
        self.kill()
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._proc = None
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
