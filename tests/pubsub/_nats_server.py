"""A private ``nats-server -js`` on a free port with its own storage directory.

Used by the tests that stop and restart the server (the shared one on port 4222
is never restarted). File storage in a temp dir, so streams survive a restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile

from tests.conftest import free_port, service_reachable

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    """Start/stop/restart one nats-server process; ``cleanup()`` removes everything."""

    def __init__(self) -> None:
        self.port = free_port()
        self.store_dir = tempfile.mkdtemp(prefix="eventmill-nats-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @staticmethod
    def available() -> bool:
        return os.path.exists(NATS_SERVER)

    async def start(self) -> None:
        self._proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self._proc.returncode}")
            if service_reachable("127.0.0.1", self.port, timeout=0.2):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start within 10s")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)

    async def restart(self, down_for: float) -> None:
        await self.stop()
        await asyncio.sleep(down_for)
        await self.start()

    async def cleanup(self) -> None:
        await self.stop()
        shutil.rmtree(self.store_dir, ignore_errors=True)
