"""The examples under examples/, run as a user runs them, against a local ``eventmill serve``.

The notification service (Router, typed handler) consumes from the service's own bus; the
payment service publishes ``payment.processed`` once straight to that bus (library) and
once over HTTP (client); the notifications name both events and the store holds both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import re
import selectors
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest

from eventmill import Client
from eventmill.store import open_store
from tests import payloads
from tests.ingest.support import RAZORPAY_SECRET, Server

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SNIPPET = EXAMPLES / "browser" / "snippet.js"
JWT_SECRET = "examples-jwt-secret-of-at-least-32-bytes"

pytestmark = pytest.mark.slow


async def _create_key(store_url: str) -> str:
    store = await open_store(store_url)
    try:
        _, plaintext = await store.api_keys.create("examples", {"publish", "read"})
        return plaintext
    finally:
        await store.close()


class Running:
    """An example running in the background, its output read line by line."""

    def __init__(self, script: str, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        self.lines.remove(line)
                        return found
                if selector.select(timeout=0.5):
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    self.lines.append(line)
        finally:
            selector.close()
        raise AssertionError(f"no {pattern!r} in the output: {self.lines}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Server, dict[str, str]]]:
    """``eventmill serve`` on its embedded SQLite bus and store, and the environment an
    example gets to reach it (the same bus URL, the service URL, an API key)."""
    bus_url = f"sqlite:///{tmp_path / 'bus.db'}?synchronous=normal"
    store_url = f"sqlite:///{tmp_path / 'events.db'}"
    key = asyncio.run(_create_key(store_url))
    server = Server(
        {
            "EVENTMILL_DATA_DIR": str(tmp_path / "data"),
            "EVENTMILL_BUS_URL": bus_url,
            "EVENTMILL_STORE_URL": store_url,
            "EVENTMILL_LOG_LEVEL": "warning",
        },
        tmp_path / "server.log",
    )
    server.start()
    env = {
        **os.environ,
        "EVENTMILL_BUS_URL": bus_url,
        "EVENTMILL_URL": server.url,
        "EVENTMILL_API_KEY": key,
        "PYTHONUNBUFFERED": "1",
    }
    try:
        yield server, env
    finally:
        server.stop()


def _run(script: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_payment_services_publish_and_the_notification_service_consumes(
    service: tuple[Server, dict[str, str]],
) -> None:
    server, env = service
    user = f"user_{uuid.uuid4().hex[:8]}"
    notifier = Running("notification_service.py", env, "--count", "2")
    try:
        notifier.wait_for(r"^ready: consuming topic events as group notifications")
        by_library = _run("payment_service_library.py", env, "--user-id", user, "--amount", "500")
        [library_id] = re.findall(r"published payment\.processed (\S+) for " + user, by_library)
        by_client = _run("payment_service_client.py", env, "--user-id", user, "--amount", "1250.5")
        [client_id] = re.findall(r"published payment\.processed (\S+) for " + user, by_client)

        first = notifier.wait_for(rf"notified {user}: payment (\S+) of 500\.00 INR captured")
        second = notifier.wait_for(rf"notified {user}: payment (\S+) of 1250\.50 INR captured")
        assert notifier.proc.wait(60) == 0  # --count 2: it stops by itself, gracefully
        assert f"(event {library_id})" in first.string
        assert f"(event {client_id})" in second.string
    finally:
        notifier.stop()

    with Client(server.url, env["EVENTMILL_API_KEY"]) as client:
        deadline = time.monotonic() + 60  # the audit handler stores the library's event
        stored: list[str] = []
        while time.monotonic() < deadline:
            stored = [e.id for e in client.events(event_name="payment.processed", user_id=user)]
            if len(stored) == 2:
                break
            time.sleep(0.1)
        assert sorted(stored) == sorted([library_id, client_id])
        assert client.event(client_id).payload["amount"] == 1250.5


def test_the_client_example_explains_a_missing_key_and_a_refusal(
    service: tuple[Server, dict[str, str]],
) -> None:
    _, env = service
    no_key = {k: v for k, v in env.items() if k != "EVENTMILL_API_KEY"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "payment_service_client.py")],
        env=no_key,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "EVENTMILL_API_KEY" in result.stderr
    wrong = {**env, "EVENTMILL_API_KEY": "em_000000000000_wrong"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "payment_service_client.py")],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "401 unauthorized" in result.stderr
    assert "em_000000000000_wrong" not in result.stderr


def test_the_browser_page_holds_the_system_descriptions_snippet_verbatim() -> None:
    page = (EXAMPLES / "browser" / "index.html").read_text()
    snippet = SNIPPET.read_text()
    assert snippet.startswith("// Frontend WebSocket connection\n")
    assert 'new WebSocket("ws://localhost:8080/ws?token=jwt_token")' in snippet
    assert snippet in page
    # where the system description sits beside the repository (shared/seed), compare
    description = ROOT.parent / "shared" / "seed" / "system-description.md"
    if description.is_file():
        [original] = re.findall(r"```javascript\n(.*?)```", description.read_text(), re.S)
        assert snippet == original


def _has_realtime() -> bool:
    return importlib.util.find_spec("eventmill.realtime") is not None


@contextlib.contextmanager
def _static_server(directory: Path) -> Iterator[str]:
    """The example's directory served over HTTP on 127.0.0.1 (a page's origin)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_the_browser_page_shows_a_razorpay_payment_received_over_the_websocket(
    tmp_path: Path,
) -> None:
    if not _has_realtime():
        pytest.skip("this build has no /ws (the realtime feature, issue 12, is not merged)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium drives Chromium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromium-driver are not installed (Debian packages)")
    user = f"user_{uuid.uuid4().hex[:8]}"
    with _static_server(EXAMPLES / "browser") as page_origin:
        server = Server.embedded(
            tmp_path,
            EVENTMILL_JWT__SECRET=JWT_SECRET,
            EVENTMILL_REALTIME__ALLOWED_ORIGINS=page_origin,
            RAZORPAY_WEBHOOK_SECRET=RAZORPAY_SECRET,
        )
        server.start()
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
        try:
            token = jwt.encode({"sub": user, "exp": int(time.time()) + 600}, JWT_SECRET, "HS256")
            browser.get(f"{page_origin}/index.html?server=127.0.0.1:{server.port}#token={token}")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: b.find_element(By.ID, "connection").text.startswith("connected"))
            body = payloads.dumps(
                payloads.payment_event("payment.captured", amount=50000, notes={"user_id": user})
            )
            headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex}")
            answer = httpx.post(
                f"{server.url}/webhooks/razorpay", content=body, headers=headers, timeout=30
            )
            assert answer.status_code == 200, answer.text
            wait.until(lambda b: b.find_element(By.ID, "payment-status").text == "completed")
            shown = browser.find_element(By.ID, "notifications").text
            assert "Payment Successful!" in shown
            assert "Payment of ₹500 received." in shown
        finally:
            browser.quit()
            server.stop()
