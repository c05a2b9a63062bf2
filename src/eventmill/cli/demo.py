"""``eventmill demo``: the whole flow of a webhook, against a running service.

It sends signed sample Razorpay ``payment.captured`` webhooks to the service, receives
their outbound deliveries on a local endpoint it registers for the demo user (and
checks their Standard Webhooks signatures), and prints the dashboard's address with a
token that sees every user's events — so a newcomer sees the webhook arrive on the
dashboard and its delivery beside it. On the embedded default it signs with the
development secrets the service uses (see :mod:`eventmill.devmode`); elsewhere it needs
the service's ``RAZORPAY_WEBHOOK_SECRET`` and ``EVENTMILL_JWT__SECRET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import orjson
import typer

from eventmill.cli._common import ConfigOption, app, err, fail, load_settings, open_store, run
from eventmill.settings import Settings

DEMO_USER = "demo-user"


def sample_payment(user_id: str, amount: int) -> dict[str, Any]:
    """A Razorpay ``payment.captured`` webhook body, shaped as Razorpay sends it."""
    now = int(time.time())
    payment_id = "pay_" + secrets.token_hex(7)
    return {
        "entity": "event",
        "account_id": "acc_DemoAccount01",
        "event": "payment.captured",
        "contains": ["payment"],
        "payload": {
            "payment": {
                "entity": {
                    "id": payment_id,
                    "entity": "payment",
                    "amount": amount,
                    "currency": "INR",
                    "status": "captured",
                    "order_id": "order_" + secrets.token_hex(7),
                    "method": "upi",
                    "captured": True,
                    "email": "customer@example.com",
                    "contact": "+919900000000",
                    "notes": {"user_id": user_id},
                    "fee": amount // 50,
                    "tax": amount // 300,
                    "created_at": now,
                }
            }
        },
        "created_at": now,
    }


class _Receiver:
    """A local HTTP endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue(maxsize=1000)
        self.port = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Receiver]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = {}
                for line in lines:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.got.put_nowait((headers, body))
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


def _say(text: str) -> None:
    """One line of output, never wrapped (ids, URLs and the token stay whole)."""
    print(text, flush=True)


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    from eventmill.delivery.signing import secret_key, sign

    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "0")
    if not timestamp.isdigit():
        return False
    expected = sign([secret_key(secret)], webhook_id, int(timestamp), body).split()
    given = headers.get("webhook-signature", "").split()
    return any(hmac.compare_digest(e, g) for e in expected for g in given)


async def _demo(settings: Settings, url: str, count: int, wait: float) -> None:
    import jwt

    from eventmill.delivery.store import DeliveryStore
    from eventmill.devmode import with_dev_secrets

    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        try:
            ready = await http.get("/readyz")
        except httpx.HTTPError:
            raise fail(f"no service at {url}: start it first (make serve)") from None
        if ready.status_code != 200:
            raise fail(f"the service at {url} is not ready: {ready.text}")
        settings = with_dev_secrets(settings, create=False)
        if not settings.razorpay_webhook_secret:
            raise fail(
                "no Razorpay webhook secret: set RAZORPAY_WEBHOOK_SECRET to the one the "
                "service uses (the embedded default makes one in eventmill-data/dev-secrets.json)"
            )
        webhook_secret = settings.razorpay_webhook_secret[0].get_secret_value()
        async with _Receiver().running() as receiver, open_store(settings, create=False) as store:
            deliveries = DeliveryStore(store)
            endpoint = await deliveries.create_endpoint(
                url=f"http://127.0.0.1:{receiver.port}/hook",
                user_id=DEMO_USER,
                event_types=["razorpay.payment.*"],
                description="eventmill demo",
                headers={},
                rate_limit=None,
            )
            if settings.jwt.secret is not None:
                token = jwt.encode(
                    {
                        "sub": DEMO_USER,
                        "exp": int(time.time()) + 3600,
                        "eventmill": {"all_users": True},
                    },
                    settings.jwt.secret.get_secret_value(),
                    algorithm="HS256",
                )
                _say(f"dashboard: {url}/#token={token}")
            else:
                _say(f"dashboard: {url}/ (sign in with a token of yours)")
            try:
                sent: list[str] = []
                for i in range(count):
                    amount = 49_900 + 10_000 * i
                    body = orjson.dumps(sample_payment(DEMO_USER, amount))
                    signature = hmac.new(webhook_secret.encode(), body, hashlib.sha256).hexdigest()
                    answer = await http.post(
                        "/webhooks/razorpay",
                        content=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Razorpay-Signature": signature,
                            "X-Razorpay-Event-Id": "evt_demo_" + secrets.token_hex(8),
                        },
                    )
                    if answer.status_code != 200:
                        raise fail(f"the webhook was refused: {answer.status_code} {answer.text}")
                    event_id = answer.json()["id"]
                    sent.append(event_id)
                    _say(
                        f"sent      razorpay.payment.captured {event_id} "
                        f"(INR {amount / 100:.2f}) -> 200"
                    )
                pending = set(sent)
                async with asyncio.timeout(wait):
                    while pending:
                        headers, body = await receiver.got.get()
                        event = orjson.loads(body)
                        if event.get("id") not in pending:
                            continue
                        pending.discard(event["id"])
                        checked = "verified" if _verify(endpoint.secret, headers, body) else "BAD"
                        _say(
                            f"delivered {event['id']} as {headers.get('webhook-id')}, "
                            f"signature {checked}"
                        )
            except TimeoutError:
                raise fail(
                    f"{len(pending)} delivery(ies) did not arrive within {wait:g} s: is the "
                    "delivery role running, and are loopback destinations allowed "
                    "(EVENTMILL_DELIVERY__ALLOW_NETWORKS)?"
                ) from None
            finally:
                await deliveries.update_endpoint(endpoint.id, {"disabled": True})
    _say(f"trace one: {_command()} trace {sent[0]}")


def _command() -> str:
    from eventmill.cli._common import command_name

    return command_name()


@app.command()
def demo(
    url: Annotated[
        str | None, typer.Option(help="The running service (default http://127.0.0.1:<port>).")
    ] = None,
    count: Annotated[int, typer.Option(min=1, max=100, help="How many webhooks to send.")] = 3,
    wait: Annotated[float, typer.Option(min=1, help="Seconds to wait for deliveries.")] = 60.0,
    config: ConfigOption = None,
) -> None:
    """Send signed sample Razorpay webhooks to a running service and receive their
    signed deliveries; print the dashboard's address to watch them arrive."""
    settings = load_settings(config)
    base = (url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    err.print(f"service: {base}")
    run(lambda: _demo(settings, base, count, wait))
