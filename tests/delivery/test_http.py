"""Each endpoint's connections (eventmill.delivery.http) against real servers on
127.0.0.1: keep-alive reuse, a server that closes, a long answer cut at 1 KiB, TLS,
and the same on uvloop (the service's event loop)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import threading
from pathlib import Path
from typing import Any

import httpcore
import pytest
import uvicorn
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import Response

from eventmill.delivery.http import Answer, Connections, Target, default_ssl_context
from eventmill.delivery.network import AddressPolicy, GuardedBackend
from tests.conftest import free_port
from tests.delivery.support import LOCAL, receiver
from tests.delivery.threaded import CountingReceiver

BODY = b'{"id": "evt_1"}'


def _connections(context: ssl.SSLContext | None = None) -> Connections:
    return Connections(
        GuardedBackend(AddressPolicy(LOCAL)),
        context or default_ssl_context(),
        connect_timeout=5,
    )


def _headers(target: Target) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", b"%d" % len(BODY))]


async def test_one_connection_is_kept_and_reused() -> None:
    clients: list[Any] = []

    def script(request: Request, n: int) -> Response:
        clients.append(request.client)
        return Response(b"ok")

    async with receiver(script) as rec:
        conns = _connections()
        target = Target.parse(rec.url(), {"X-Custom": "1", "webhook-id": "forged"})
        for _ in range(5):
            answer = await conns.post(target, _headers(target), BODY, 5)
            assert (answer.status, answer.body) == (200, b"ok")
        assert len(set(map(tuple, clients))) == 1
        assert conns.idle == 1
        got = rec.received[0]
        assert got.headers["x-custom"] == "1"
        assert "webhook-id" not in got.headers  # the dispatcher's own headers win
        assert got.body == BODY
        await conns.close_idle()
        assert conns.idle == 0


async def test_a_server_closing_the_connection_gets_a_new_one() -> None:
    clients: list[Any] = []

    def script(request: Request, n: int) -> Response:
        clients.append(request.client)
        return Response(b"bye", headers={"connection": "close"})

    async with receiver(script) as rec:
        conns = _connections()
        target = Target.parse(rec.url(), {})
        for _ in range(3):
            assert (await conns.post(target, _headers(target), BODY, 5)).status == 200
        assert len(set(map(tuple, clients))) == 3
        assert conns.idle == 0


async def test_a_long_answer_is_cut_at_one_kib_and_its_connection_dropped() -> None:
    async with receiver(lambda r, n: Response(b"x" * 5_000_000, status_code=500)) as rec:
        conns = _connections()
        target = Target.parse(rec.url(), {})
        answer = await conns.post(target, _headers(target), BODY, 5)
        assert answer.status == 500
        assert answer.body == b"x" * 1024
        assert conns.idle == 0


async def test_a_hanging_server_times_out_and_leaves_no_connection() -> None:
    async def script(request: Request, n: int) -> Response:
        await asyncio.sleep(30)
        return Response(b"late")

    async with receiver(script) as rec:
        conns = _connections()
        target = Target.parse(rec.url(), {})
        with pytest.raises(httpcore.ReadTimeout):
            await conns.post(target, _headers(target), BODY, 0.3)
        assert conns.idle == 0


def test_on_uvloop() -> None:
    async def main(url: str) -> list[int]:
        conns = _connections()
        target = Target.parse(url, {})
        codes = [(await conns.post(target, _headers(target), BODY, 5)).status for _ in range(3)]
        await conns.close_idle()
        return codes

    with CountingReceiver() as rec, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main(rec.url("/hook"))) == [200, 200, 200]
        assert rec.requests["/hook"] == 3


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventmill test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_with_a_trusted_certificate_and_not_with_an_untrusted_one(
    tmp_path: Path,
) -> None:
    cert, key = _certificate(tmp_path)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["scheme"].encode()})

    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        target = Target.parse(f"https://127.0.0.1:{port}/hook", {})
        trusted = ssl.create_default_context(cafile=str(cert))
        conns = _connections(trusted)
        for _ in range(2):
            answer = await conns.post(target, _headers(target), BODY, 5)
            assert (answer.status, answer.body) == (200, b"https")
        assert conns.idle == 1
        await conns.close_idle()
        with pytest.raises(httpcore.ConnectError, match="certificate verify failed"):
            await _connections().post(target, _headers(target), BODY, 5)
    finally:
        server.should_exit = True
        thread.join(10)


class _Raw:
    """A server on 127.0.0.1 that answers each request with the same raw bytes (and
    closes the connection after it, if asked)."""

    def __init__(self, answer: bytes, *, close: bool) -> None:
        self.answer = answer
        self.close = close
        self.requests: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook?x=1"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()


async def test_an_interim_answer_is_skipped_and_a_chunked_one_read_with_retry_after() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    raw = _Raw(answer, close=False)
    async with raw as url:
        conns = _connections()
        target = Target.parse(url, {"X-Custom": "1"})
        for _ in range(2):
            assert await conns.post(target, _headers(target), BODY, 5) == Answer(429, "7", b"abcde")
        assert conns.idle == 1  # one connection, kept
        await conns.close_idle()
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /hook?x=1 HTTP/1.1\r\n")
    assert b"\r\nx-custom: 1\r\n" in head + b"\r\n"
    assert body == BODY
    assert len(raw.requests) == 2


async def test_an_answer_without_a_length_ends_when_the_server_closes() -> None:
    async with _Raw(b"HTTP/1.1 200 OK\r\n\r\nhello", close=True) as url:
        conns = _connections()
        target = Target.parse(url, {})
        assert await conns.post(target, _headers(target), BODY, 5) == Answer(200, None, b"hello")
        assert conns.idle == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # cut short
        b"",  # closed unanswered
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
)
async def test_a_malformed_or_cut_answer_is_a_protocol_error(answer: bytes) -> None:
    async with _Raw(answer, close=True) as url:
        conns = _connections()
        target = Target.parse(url, {})
        with pytest.raises(httpcore.RemoteProtocolError):
            await conns.post(target, _headers(target), BODY, 5)
        assert conns.idle == 0


def test_a_header_that_could_break_the_request_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        Target.parse("http://127.0.0.1/hook", {"X-Evil": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="cannot be sent"):
        Target.parse("http://127.0.0.1/hook", {"Bad Name": "1"})
