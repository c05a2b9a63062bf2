"""The browser side, in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium): the system description's snippet verbatim in a page receives a
real, signed Razorpay webhook and shows its amount; the dashboard shows a newly
ingested event; the JS client resumes after the server restarts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from eventmill.events import Event
from eventmill.store import open_store
from tests import payloads
from tests.conftest import REQUIRE_SERVICES, free_port
from tests.ingest.support import RAZORPAY_SECRET
from tests.realtime.support import (
    Node,
    admin_token,
    embedded_node,
    embedded_store_url,
    event,
    token,
)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# The browser snippet of the system description ("Example 2: Real-time User
# Notification"), verbatim: it connects to ws://localhost:8080/ws?token=jwt_token.
SNIPPET = """\
// Frontend WebSocket connection
const ws = new WebSocket("ws://localhost:8080/ws?token=jwt_token");

ws.onmessage = function (event) {
  const message = JSON.parse(event.data);

  if (message.type === "event") {
    const eventData = message.payload;

    switch (eventData.event_name) {
      case "razorpay.payment.captured":
        showPaymentSuccess(eventData.payload);
        break;
      case "user.profile.updated":
        refreshUserProfile();
        break;
      default:
        console.log("Received event:", eventData);
    }
  }
};

function showPaymentSuccess(paymentData) {
  // Display success notification
  showNotification({
    type: "success",
    title: "Payment Successful!",
    message: `Payment of ₹${paymentData.payment.amount / 100} received.`,
  });

  // Update UI state
  updatePaymentStatus("completed");
}
"""

# The page around it: the app functions the snippet calls, and (since the snippet names
# a placeholder URL and token) a WebSocket that points them at the test server.
SNIPPET_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>snippet</title></head>
<body>
<div id="notification"></div><div id="payment-status"></div><div id="socket"></div>
<script>
  const TARGET = %(target)s;
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    const real = url === "ws://localhost:8080/ws?token=jwt_token" ? TARGET : url;
    const socket = new NativeWebSocket(real, protocols);
    socket.addEventListener("open", () => {
      document.getElementById("socket").textContent = "open";
    });
    return socket;
  };
  function showNotification(n) {
    document.getElementById("notification").textContent = n.title + " " + n.message;
  }
  function updatePaymentStatus(status) {
    document.getElementById("payment-status").textContent = status;
  }
  function refreshUserProfile() {}
</script>
<script>
%(snippet)s
</script>
</body></html>
"""

CLIENT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client</title></head>
<body>
<script src="%(base)s/client.js"></script>
<script>
  window.received = [];
  window.statuses = [];
  window.client = new EventmillClient({
    url: "%(ws)s",
    token: () => "%(token)s",
    minDelay: 200,
    maxDelay: 1000,
    onEvent: (event) => window.received.push(event.id),
    onStatus: (status, detail) => window.statuses.push([status, detail && detail.code]),
  });
  window.client.connect();
</script>
</body></html>
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (fresh profile) driven through chromedriver."""
    if shutil.which(CHROMIUM) is None or shutil.which(CHROMEDRIVER) is None:
        reason = "chromium and chromium-driver are not installed (apt-get install -y ...)"
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} and EVENTMILL_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(__import__("tempfile").mkdtemp(prefix="eventmill-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# A page that counts the sockets the client opens and starts clients on demand:
# ``start(options)`` takes ``tokens`` (``token()`` gives them in turn, then the last one
# again; "throw" throws) besides the client's own options.
PROBE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>probe</title></head>
<body>
<script src="%(base)s/client.js"></script>
<script>
  const NativeWebSocket = window.WebSocket;
  window.sockets = [];
  window.WebSocket = function (url, protocols) {
    const socket = new NativeWebSocket(url, protocols);
    window.sockets.push(socket);
    return socket;
  };
  window.inState = (state) => window.sockets.filter((s) => s.readyState === state).length;
  window.start = (options) => {
    window.received = [];
    window.positions = [];
    window.statuses = [];
    window.messages = [];
    window.errors = [];
    const tokens = options.tokens.slice();
    const client = new EventmillClient(Object.assign({
      url: "%(ws)s",
      minDelay: 100,
      maxDelay: 400,
      token: () => {
        const t = tokens.length > 1 ? tokens.shift() : tokens[0];
        if (t === "throw") throw new Error("offline");
        if (t && t.delay) return new Promise((r) => setTimeout(() => r(t.token), t.delay));
        return t;
      },
      onEvent: (event, message) => {
        window.received.push(event.event_name);
        window.positions.push(message.position);
      },
      onStatus: (status, detail) => window.statuses.push([status, detail && detail.code]),
      onMessage: (message) => window.messages.push(message.type),
      onError: (message) => window.messages.push("error:" + message.error),
    }, options));
    window.client = client;
    try { client.connect(); } catch (e) { window.errors.push(String(e)); }
  };
</script>
</body></html>
"""


@contextlib.contextmanager
def page_server(directory: Path) -> Iterator[str]:
    """A static HTTP server for test pages (another origin than the service's)."""
    port = free_port()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it is truthy (a hang guard, not an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("pages")
    with page_server(directory) as origin:
        yield directory, origin


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, pages: tuple[Path, str]
) -> Iterator[tuple[Node, str]]:
    tmp = tmp_path_factory.mktemp("realtime-browser")
    _, origin = pages
    with embedded_node(tmp, EVENTMILL_REALTIME__ALLOWED_ORIGINS=origin) as node:
        yield node, embedded_store_url(tmp)


def _text(driver: Any, element_id: str) -> str:
    text: str = driver.find_element("id", element_id).text
    return text


def test_the_system_descriptions_snippet_shows_a_real_razorpay_payment(
    chromium: Any, pages: tuple[Path, str], node: tuple[Node, str]
) -> None:
    server, _ = node
    directory, origin = pages
    user = f"user_{uuid.uuid4().hex[:8]}"
    target = f"{server.ws_url}?token={token(user)}"
    (directory / "snippet.html").write_text(
        SNIPPET_PAGE % {"target": orjson.dumps(target).decode(), "snippet": SNIPPET}
    )
    chromium.get(f"{origin}/snippet.html")
    wait_until(lambda: _text(chromium, "socket") == "open")

    # a real Razorpay payment.captured body, signed with the webhook secret
    body = payloads.payment_event(
        "payment.captured", id="pay_browser", amount=50000, notes={"user_id": user}
    )
    raw = payloads.dumps(body)
    headers = payloads.razorpay_headers(raw, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex[:14]}")
    response = httpx.post(f"{server.url}/webhooks/razorpay", content=raw, headers=headers)
    assert response.status_code == 200, response.text

    wait_until(lambda: _text(chromium, "notification"))
    assert _text(chromium, "notification") == "Payment Successful! Payment of ₹500 received."
    assert _text(chromium, "payment-status") == "completed"


def test_the_dashboard_shows_a_newly_ingested_event(chromium: Any, node: tuple[Node, str]) -> None:
    server, _ = node
    chromium.get(f"{server.url}/")
    chromium.find_element("id", "token").send_keys(admin_token())
    chromium.find_element("id", "connect").click()
    wait_until(lambda: _text(chromium, "status") == "live")

    user = f"user_{uuid.uuid4().hex[:8]}"
    [shown, other] = asyncio.run(
        server.publish(event(user, "shop.order.paid", amount=1234), event(None, "system.tick"))
    )
    rows = wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{shown}']"))
    row = rows[0]
    assert row.find_element("css selector", ".name").text == "shop.order.paid"
    assert row.find_element("css selector", ".user").text == user
    assert row.find_element("css selector", ".source").text == "tests"
    row.click()  # expands the event's JSON
    detail = chromium.execute_script("return arguments[0].nextElementSibling;", row)
    wait_until(detail.is_displayed)
    shown_json = orjson.loads(detail.find_element("css selector", "pre.json").text)
    assert shown_json["id"] == shown
    assert shown_json["payload"] == {"amount": 1234}
    # its deliveries, from the delivery feature's API (none: no endpoint is registered)
    deliveries = detail.find_element("css selector", ".deliveries")
    wait_until(lambda: "No deliveries for this event." in deliveries.text)

    # filters: by name, then by user
    wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{other}']"))
    other_row = chromium.find_element("css selector", f"tr[data-id='{other}']")
    chromium.find_element("id", "filter-name").send_keys("shop.*")
    wait_until(lambda: not other_row.is_displayed())
    assert row.is_displayed()
    chromium.find_element("id", "filter-name").clear()
    chromium.find_element("id", "filter-user").send_keys("nobody-by-that-name")
    wait_until(lambda: not row.is_displayed())
    user_filter = chromium.find_element("id", "filter-user")
    user_filter.clear()
    user_filter.send_keys(user[:-1])  # the whole id, not a part of it
    wait_until(lambda: not row.is_displayed())
    user_filter.send_keys(user[-1])
    wait_until(row.is_displayed)
    user_filter.clear()
    user_filter.send_keys("user_*")
    wait_until(row.is_displayed)


def test_signing_in_again_shows_each_recent_event_once(
    chromium: Any, node: tuple[Node, str]
) -> None:
    """Connect replays the recent events; a second sign-in (after an expired token, or
    Disconnect then Connect) keeps what is shown and adds no second row for them."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    [shown] = asyncio.run(server.publish(event(user, "shop.order.paid")))
    chromium.get(f"{server.url}/")
    chromium.execute_script("sessionStorage.clear()")  # an earlier test's sign-in
    chromium.refresh()
    chromium.find_element("id", "token").send_keys(admin_token())
    chromium.find_element("id", "connect").click()
    wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{shown}']"))
    chromium.find_element("id", "disconnect").click()
    wait_until(lambda: chromium.find_element("id", "connect").is_displayed())
    field = chromium.find_element("id", "token")
    field.clear()
    field.send_keys(admin_token())
    chromium.find_element("id", "connect").click()  # signed in again
    wait_until(lambda: _text(chromium, "status") == "live")
    [after] = asyncio.run(server.publish(event(user, "shop.order.paid")))
    wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{after}']"))
    assert len(chromium.find_elements("css selector", f"tr[data-id='{shown}']")) == 1


def test_a_sign_in_link_followed_while_the_dashboard_is_open_signs_in(
    chromium: Any, node: tuple[Node, str]
) -> None:
    """``/#token=…`` (what ``eventmill demo`` prints) was read only when the page
    loaded: followed in an open dashboard, it was ignored."""
    server, _ = node
    first, second = (f"user_{uuid.uuid4().hex[:8]}" for _ in range(2))
    chromium.get(f"{server.url}/#token={token(first)}")
    wait_until(lambda: _text(chromium, "status") == "live")
    chromium.execute_script("location.hash = arguments[0]", f"token={token(second)}")
    wait_until(lambda: chromium.execute_script("return location.hash") == "")
    wait_until(lambda: _text(chromium, "status") == "live")
    [theirs] = asyncio.run(server.publish(event(second, "shop.order.paid")))
    wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{theirs}']"))


def test_the_js_client_resumes_after_the_server_restarts(
    chromium: Any, pages: tuple[Path, str], node: tuple[Node, str]
) -> None:
    server, store_url = node
    directory, origin = pages
    user = f"user_{uuid.uuid4().hex[:8]}"
    (directory / "client.html").write_text(
        CLIENT_PAGE % {"base": server.url, "ws": server.ws_url, "token": token(user)}
    )
    chromium.get(f"{origin}/client.html")
    wait_until(lambda: ["open", None] in chromium.execute_script("return window.statuses"))
    received = lambda: chromium.execute_script("return window.received")  # noqa: E731

    before = asyncio.run(server.publish(event(user, "test.before"), event(user, "test.before")))
    wait_until(lambda: received() == before)

    server.server.stop()  # SIGTERM: clients are told 1001 (going away)
    wait_until(lambda: ["closed", 1001] in chromium.execute_script("return window.statuses"))

    async def while_down() -> list[str]:
        """Events stored while this node is down (as another node would store them)."""
        store = await open_store(store_url)
        try:
            out = []
            for n in range(3):
                e = Event(event_name="test.missed", source="tests", user_id=user, payload={"n": n})
                stored, _ = await store.events.insert(e, published=True)
                out.append(stored.id)
            return out
        finally:
            await store.close()

    missed = asyncio.run(while_down())
    server.server.start()  # the same port
    wait_until(lambda: received() == before + missed, timeout=60)
    after = asyncio.run(server.publish(event(user, "test.after")))
    wait_until(lambda: len(received()) == len(before + missed + after))
    assert received() == before + missed + after


@pytest.fixture
def probe(chromium: Any, pages: tuple[Path, str], node: tuple[Node, str]) -> Callable[..., Any]:
    """The probe page loaded; returns ``run(script)`` (``return``s its value)."""
    server, _ = node
    directory, origin = pages
    (directory / "probe.html").write_text(PROBE_PAGE % {"base": server.url, "ws": server.ws_url})
    chromium.get(f"{origin}/probe.html")

    def run(script: str, *args: Any) -> Any:
        return chromium.execute_script(script, *args)

    return run


def test_the_js_client_stops_when_its_token_function_gives_the_expired_token_again(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """4002 makes it ask ``token()`` again: a new token reconnects; the expired one
    again stops it (status failed), instead of reconnecting in a loop."""
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: [arguments[0]]})", token(user, ttl=3))
    wait_until(lambda: ["failed", 4002] in probe("return window.statuses"), timeout=20)
    assert probe("return window.sockets.length") == 1  # the expired token was not sent again
    assert probe("return client.status") == "failed"

    probe("start({tokens: [arguments[0], arguments[1]]})", token(user, ttl=3), token(user))
    wait_until(lambda: ["closed", 4002] in probe("return window.statuses"), timeout=20)
    wait_until(lambda: probe("return client.status") == "open")
    asyncio.run(node[0].publish(event(user, "test.renewed")))
    wait_until(lambda: probe("return window.received") == ["test.renewed"])


def test_the_js_client_keeps_one_socket_across_connect_and_close(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: [arguments[0]]})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    probe("client.connect(); client.close(); client.connect(); client.connect();")
    wait_until(lambda: probe("return client.status") == "open")
    # every socket but the client's own is closed: none left behind, still counting
    wait_until(lambda: probe("return inState(0) + inState(2)") == 0)
    assert probe("return inState(1)") == 1
    asyncio.run(node[0].publish(event(user, "test.once")))
    wait_until(lambda: probe("return window.received") == ["test.once"])
    probe("client.close()")
    wait_until(lambda: probe("return inState(1)") == 0)


def test_the_js_client_retries_a_token_function_that_throws(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: ['throw', 'throw', arguments[0]]})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    assert probe("return window.errors") == []
    assert probe("return window.sockets.length") == 1
    asyncio.run(node[0].publish(event(user, "test.after.throw")))
    wait_until(lambda: probe("return window.received") == ["test.after.throw"])


def _start_with_a_token_expiring_soon(probe: Callable[..., Any], user: str) -> None:
    """A client on ``test.a`` whose first token expires in ~4 s (the server closes with
    4002: a drop) and whose token function then gives a fresh one; once open."""
    probe(
        "start({tokens: [arguments[0], arguments[1]], events: ['test.a']})",
        token(user, ttl=4),
        token(user),
    )
    wait_until(lambda: probe("return client.status") == "open")


def test_the_js_client_unsubscribed_from_everything_stays_so_across_a_drop(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """Unsubscribed from every pattern, a dropped connection (here: its token expires)
    is not reopened as "every event": the client waits for ``subscribe``."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    _start_with_a_token_expiring_soon(probe, user)
    asyncio.run(server.publish(event(user, "test.a")))
    wait_until(lambda: probe("return window.received") == ["test.a"])
    probe("client.unsubscribe(['test.a'])")
    wait_until(lambda: "unsubscribed" in probe("return window.messages"))
    wait_until(lambda: ["paused", None] in probe("return window.statuses"), timeout=20)
    asyncio.run(server.publish(event(user, "test.a"), event(user, "test.b")))
    probe("client.subscribe(['test.b'])")
    wait_until(lambda: probe("return client.status") == "open")
    asyncio.run(server.publish(event(user, "test.a"), event(user, "test.b")))
    wait_until(lambda: len(probe("return window.received")) >= 2)
    # what it did not want, before and after, never came; nor what passed while paused
    assert probe("return window.received") == ["test.a", "test.b"]


def test_the_js_client_forgets_a_pattern_the_server_refused(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """A refused pattern stays out of the client's patterns, so the reconnect after a
    drop (here: its token expires) is not refused 4400 for good."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    _start_with_a_token_expiring_soon(probe, user)
    probe("client.subscribe(['bad pattern!'])")
    wait_until(lambda: "error:invalid_pattern" in probe("return window.messages"))
    assert probe("return client.events") == ["test.a"]
    wait_until(lambda: ["closed", 4002] in probe("return window.statuses"), timeout=20)
    wait_until(lambda: probe("return client.status") == "open")
    asyncio.run(server.publish(event(user, "test.a")))
    wait_until(lambda: probe("return window.received") == ["test.a"])


def test_the_js_client_unsubscribed_while_its_token_comes_opens_no_socket(
    probe: Callable[..., Any],
) -> None:
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe(
        "start({tokens: [{delay: 800, token: arguments[0]}], events: ['test.a']});"
        "client.unsubscribe(['test.a']);",
        token(user),
    )
    wait_until(lambda: probe("return client.status") == "paused")
    assert probe("return window.sockets.length") == 0


def test_the_js_client_stops_on_patterns_no_address_can_carry(probe: Callable[..., Any]) -> None:
    """50 long patterns: valid for the server, but the address would be ~9 KB, which
    servers refuse (414) before any WebSocket: failed at once, not retried forever."""
    probe(
        "start({tokens: [arguments[0]], events: Array.from({length: 50}, (_, i) =>"
        " 'p' + i + '.' + 'a'.repeat(180))})",
        token(f"user_{uuid.uuid4().hex[:8]}"),
    )
    wait_until(lambda: probe("return client.status") == "failed")
    assert probe("return window.sockets.length") == 0


def test_the_js_client_subscribing_with_since_does_not_repeat_what_it_had(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: [arguments[0]], events: ['test.a']})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    asyncio.run(server.publish(event(user, "test.a"), event(user, "test.b")))
    wait_until(lambda: probe("return window.received") == ["test.a"])
    start = probe("return client.position") - 2  # before both
    probe("client.subscribe(['test.b'], arguments[0])", start)
    wait_until(lambda: len(probe("return window.received")) >= 2)  # the replayed test.b
    asyncio.run(server.publish(event(user, "test.a")))
    wait_until(lambda: len(probe("return window.received")) >= 3)
    # the replay brings test.b (missed: it was not subscribed), not test.a again
    assert probe("return window.received") == ["test.a", "test.b", "test.a"]


def test_the_js_client_subscribing_with_since_hands_out_what_it_never_had(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """Connected live (no since) after test.a and test.b were stored, subscribing to
    test.b from before both hands out both: test.a was never delivered either."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    asyncio.run(server.publish(event(user, "test.a"), event(user, "test.b")))
    probe("start({tokens: [arguments[0]], events: ['test.a']})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    start = probe("return client.position") - 2  # before both
    probe("client.subscribe(['test.b'], arguments[0])", start)
    wait_until(lambda: len(probe("return window.received")) >= 2)
    assert probe("return window.received") == ["test.a", "test.b"]


def test_the_js_client_hands_out_nothing_twice_while_subscribing_under_load(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """Events published all along while the client subscribes with `since` again and
    again: the replays overlap what came live, and no position is handed out twice."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: [arguments[0]], events: ['test.a']})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    stop = threading.Event()

    def publishing() -> None:
        while not stop.is_set():
            asyncio.run(server.publish(event(user, "test.a")))

    thread = threading.Thread(target=publishing)
    thread.start()
    try:
        for n in range(8):
            wait_until(lambda: probe("return window.positions.length") > 0)
            since = probe("return client.position") - 3
            probe("client.subscribe(['test.b' + arguments[0]], arguments[1])", n, since)
            # answered (or carried by a reconnect's address, should the server have
            # closed a connection that fell behind meanwhile)
            wait_until(
                lambda: probe(
                    "return client.status === 'open' && !Object.keys(client._requests).length"
                )
            )
    finally:
        stop.set()
        thread.join(30)
    positions = probe("return window.positions")
    assert len(positions) == len(set(positions)), positions


def test_the_js_client_keeps_its_position_when_a_subscribe_is_refused(
    probe: Callable[..., Any], node: tuple[Node, str]
) -> None:
    """A refused subscribe(patterns, since) leaves the position to resume from as it
    was, so a drop right after it does not bring old events again."""
    server, _ = node
    user = f"user_{uuid.uuid4().hex[:8]}"
    probe("start({tokens: [arguments[0]], events: ['test.a']})", token(user))
    wait_until(lambda: probe("return client.status") == "open")
    asyncio.run(server.publish(event(user, "test.a"), event(user, "test.a")))
    wait_until(lambda: len(probe("return window.received")) == 2)
    position = probe("return client.position")
    probe("client.subscribe(['bad pattern!'], 0)")
    wait_until(lambda: "error:invalid_pattern" in probe("return window.messages"))
    assert probe("return client.position") == position
    probe("client._ws.close(4000, 'test drop')")  # the client reconnects and resumes
    # reconnected: read in one script (between two, the socket may be gone and not yet new)
    wait_until(
        lambda: probe(
            "return client.status === 'open' && !!client._ws && client._ws.readyState === 1"
        )
    )
    asyncio.run(server.publish(event(user, "test.a")))
    wait_until(lambda: len(probe("return window.received")) >= 3)
    positions = probe("return window.positions")
    assert len(positions) == 3 == len(set(positions)), positions


def test_the_dashboard_explains_an_expired_token_and_stops(
    chromium: Any, node: tuple[Node, str]
) -> None:
    server, _ = node
    chromium.get(f"{server.url}/")
    chromium.execute_script("sessionStorage.clear()")  # no token saved by another test
    chromium.refresh()
    chromium.find_element("id", "token").send_keys(token("user_expired", ttl=-60))
    chromium.find_element("id", "connect").click()
    wait_until(lambda: _text(chromium, "status").startswith("refused"))
    assert "4002" in _text(chromium, "status")
    assert "expired" in _text(chromium, "problem")
    assert (
        chromium.execute_script(
            "return window.performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('favicon')).length"
        )
        == 0
    )


def test_the_dashboard_says_when_a_reconnect_missed_more_than_the_server_replays(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A node that replays at most 3 events on resume is down while 6 are stored: the
    dashboard, reconnecting, shows the gap notice (it stays), then live events again."""
    tmp = tmp_path_factory.mktemp("realtime-gap")
    store_url = embedded_store_url(tmp)
    with embedded_node(tmp, EVENTMILL_REALTIME__RESUME_MAX_EVENTS="3") as server:
        chromium.get(f"{server.url}/")
        chromium.find_element("id", "token").send_keys(admin_token())
        chromium.find_element("id", "connect").click()
        wait_until(lambda: _text(chromium, "status") == "live")
        user = f"user_{uuid.uuid4().hex[:8]}"
        [seen] = asyncio.run(server.publish(event(user, "test.before")))
        wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{seen}']"))
        assert not chromium.find_element("id", "gap").is_displayed()

        server.server.stop()
        wait_until(lambda: _text(chromium, "status") != "live")

        async def while_down() -> None:
            store = await open_store(store_url)
            try:
                for n in range(6):
                    e = Event(
                        event_name="test.missed", source="tests", user_id=user, payload={"n": n}
                    )
                    await store.events.insert(e, published=True)
            finally:
                await store.close()

        asyncio.run(while_down())
        server.server.start()  # the same port
        wait_until(lambda: chromium.find_element("id", "gap").is_displayed(), timeout=60)
        assert "missed while disconnected" in _text(chromium, "gap")
        wait_until(lambda: _text(chromium, "status") == "live")
        [after] = asyncio.run(server.publish(event(user, "test.after")))
        wait_until(lambda: chromium.find_elements("css selector", f"tr[data-id='{after}']"))
        assert chromium.find_element("id", "gap").is_displayed()  # it stays until Clear
        chromium.find_element("id", "clear").click()
        wait_until(lambda: not chromium.find_element("id", "gap").is_displayed())


async def test_pages_are_served_with_their_types_and_a_csp(tmp_path: Path) -> None:
    from tests.ingest.support import running_app, settings_for

    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'events.db'}")
    async with running_app(settings) as (_, client):
        index = await client.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        for path in ("/client.js", "/static/dashboard.js"):
            script = await client.get(path)
            assert script.status_code == 200
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "EventmillClient" in (await client.get("/client.js")).text
        css = await client.get("/static/dashboard.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that answers ``status`` (a class attribute the test flips)."""

    status = 500
    calls: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).calls.append(self.headers.get("webhook-id", ""))
        self.send_response(type(self).status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _delivery_status(chromium: Any, detail: Any) -> str | None:
    """The first delivery line's status in an event's open section (None while loading)."""
    status = chromium.execute_script(
        "var line = arguments[0].querySelector('.delivery');"
        " return line ? line.dataset.status : null;",
        detail,
    )
    return None if status is None else str(status)


def test_the_dashboard_shows_deliveries_and_retries_a_failed_one(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("realtime-deliveries")
    port = free_port()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    _Receiver.status, _Receiver.calls = 500, []
    try:
        with embedded_node(
            tmp,
            ("admin",),
            EVENTMILL_DELIVERY__ALLOW_NETWORKS='["127.0.0.0/8"]',
            EVENTMILL_DELIVERY__RETRY_SCHEDULE="[0, 0.1]",
            EVENTMILL_DELIVERY__POLL_INTERVAL_SECONDS="0.1",
        ) as server:
            user = f"user_{uuid.uuid4().hex[:8]}"
            created = httpx.post(
                f"{server.url}/v1/endpoints",
                json={"url": f"http://127.0.0.1:{port}/hook", "user_id": user},
                headers={"Authorization": f"Bearer {server.key}"},
            )
            assert created.status_code == 201, created.text
            chromium.get(f"{server.url}/")
            # an operator's token: it sees every user's events and deliveries
            chromium.find_element("id", "token").send_keys(admin_token())
            chromium.find_element("id", "connect").click()
            wait_until(lambda: _text(chromium, "status") == "live")

            [event_id] = asyncio.run(server.publish(event(user, "shop.order.paid")))
            wait_until(lambda: len(_Receiver.calls) == 2)  # both attempts failed: dead
            row = wait_until(
                lambda: chromium.find_elements("css selector", f"tr[data-id='{event_id}']")
            )[0]
            row.click()
            detail = chromium.execute_script("return arguments[0].nextElementSibling;", row)
            # the section follows a pending delivery by itself, redrawing it each second;
            # its status is read in one script, so a redraw cannot come in between
            wait_until(lambda: _delivery_status(chromium, detail) == "failed")
            line = detail.find_element("css selector", ".delivery")  # no redraw once done
            assert "2 attempt(s)" in line.text
            line.find_element("xpath", ".//button[text()='Attempts']").click()
            wait_until(lambda: len(line.find_elements("css selector", "ol.attempts li")) == 2)
            assert "HTTP 500" in line.find_element("css selector", "ol.attempts").text

            _Receiver.status = 200
            line.find_element("css selector", "button.retry").click()
            wait_until(lambda: len(_Receiver.calls) == 3)  # sent again, and answered 2xx
            assert _Receiver.calls[2] == _Receiver.calls[0]  # the same webhook-id
            # the open section follows the retry by itself
            wait_until(lambda: _delivery_status(chromium, detail) == "succeeded")
            attempts = detail.find_element("css selector", ".delivery button")
            attempts.click()
            history = detail.find_element("css selector", "ol.attempts")
            wait_until(lambda: len(history.find_elements("css selector", "li")) == 3)
            first = history.find_elements("css selector", "li")[0].text
            assert first.count("HTTP 500") == 1, first
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join(5)


def test_the_newcomer_sees_the_demo_and_its_deliveries_on_the_dashboard(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's path: the service on its embedded default, then `eventmill demo`,
    then the dashboard address it printed: the webhooks are there, each with its
    delivery, succeeded."""
    import os
    import subprocess

    from tests.ingest.support import VENV_BIN, Server

    tmp = tmp_path_factory.mktemp("newcomer")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTMILL_", "RAZORPAY_", "PUBSUB_"))
    }
    env["EVENTMILL_DATA_DIR"] = str(tmp / "eventmill-data")
    server = Server(env, tmp / "serve.log")
    server.start()
    try:
        demo = subprocess.run(
            [str(VENV_BIN / "eventmill"), "demo", "--url", server.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        dashboard = demo.stdout.splitlines()[0].removeprefix("dashboard: ")
        sent = [line.split()[2] for line in demo.stdout.splitlines() if line.startswith("sent ")]
        assert len(sent) == 3
        chromium.get(dashboard)
        wait_until(lambda: _text(chromium, "status") == "live")
        assert "#token" not in chromium.current_url  # it left the address bar
        for event_id in sent:
            row = wait_until(
                lambda event_id=event_id: chromium.find_elements(
                    "css selector", f"tr[data-id='{event_id}']"
                )
            )[0]
            assert row.find_element("css selector", ".name").text == "razorpay.payment.captured"
            assert row.find_element("css selector", ".user").text == "demo-user"
            row.click()
            detail = chromium.execute_script("return arguments[0].nextElementSibling;", row)
            # (a delivery still in flight is followed to its outcome)
            wait_until(lambda detail=detail: _delivery_status(chromium, detail) == "succeeded")
    finally:
        server.stop()
