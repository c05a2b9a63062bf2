"""A throwaway PostgreSQL 15 cluster on a free port, for tests that restart the server.

``initdb`` refuses to run as root, so as root the binaries run through
``runuser -u postgres --`` in a temp dir owned by postgres. The cluster is stopped
and its directory removed by :meth:`PostgresServer.cleanup`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

BIN = Path(os.environ.get("EVENTMILL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (BIN / "initdb").exists() and (BIN / "pg_ctl").exists()


class PostgresServer:
    """One disposable cluster: ``start()``, ``restart(down_for)``, ``cleanup()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="eventmill-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._initialised = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        if not self._initialised:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
            self._initialised = True
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c shared_buffers=32MB -c max_connections=60"
        )
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.log),
            "-w",
            "start",
            check=False,
        )
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{tail}")

    def stop(self, mode: str = "fast") -> None:
        if self._initialised:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    async def restart(self, down_for: float) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)

    def cleanup(self) -> None:
        self.stop("immediate")
        deadline = time.monotonic() + 10
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
