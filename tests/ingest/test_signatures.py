"""Signature schemes, checked against the providers' own reference implementations."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
import razorpay
import standardwebhooks
from razorpay.errors import SignatureVerificationError

from eventmill.errors import ConfigurationError
from eventmill.ingest.signatures import (
    GitHubScheme,
    HmacScheme,
    RazorpayScheme,
    StandardWebhooksScheme,
    StripeScheme,
    body_digest,
)
from eventmill.web.errors import SignatureError
from tests import payloads

SECRET = "rzp_webhook_s3cret"
OLD_SECRET = "rzp_webhook_old"


def _sdk_accepts(body: bytes, signature: str, secret: str) -> bool:
    try:
        return bool(razorpay.Utility().verify_webhook_signature(body.decode(), signature, secret))
    except SignatureVerificationError:
        return False


@pytest.mark.parametrize("event", sorted(payloads.RAZORPAY_SAMPLES))
def test_razorpay_agrees_with_the_official_sdk(event: str) -> None:
    body = payloads.dumps(payloads.RAZORPAY_SAMPLES[event]())
    scheme = RazorpayScheme([SECRET])
    headers = payloads.razorpay_headers(body, SECRET, "evt_1")
    good = headers["X-Razorpay-Signature"]
    assert _sdk_accepts(body, good, SECRET)
    assert scheme.verify(headers, body).delivery_id == "evt_1"

    tampered = body.replace(b"50", b"51", 1) if b"50" in body else body + b" "
    assert not _sdk_accepts(tampered, good, SECRET)
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify(headers, tampered)

    wrong = payloads.razorpay_headers(body, "other", "evt_1")["X-Razorpay-Signature"]
    assert not _sdk_accepts(body, wrong, SECRET)
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify({**headers, "X-Razorpay-Signature": wrong}, body)


def test_razorpay_accepts_any_rotated_secret_and_unicode_bodies() -> None:
    body = payloads.dumps({"event": "payment.captured", "note": "₹ 500 — ok"})
    scheme = RazorpayScheme([SECRET, OLD_SECRET])
    for secret in (SECRET, OLD_SECRET):
        headers = payloads.razorpay_headers(body, secret, "evt_2")
        assert _sdk_accepts(body, headers["X-Razorpay-Signature"], secret)
        assert scheme.verify(headers, body).delivery_id == "evt_2"
    with pytest.raises(SignatureError):
        RazorpayScheme([SECRET]).verify(payloads.razorpay_headers(body, OLD_SECRET, "e"), body)


def test_razorpay_missing_header_and_lowercase_names() -> None:
    body = b"{}"
    scheme = RazorpayScheme([SECRET])
    with pytest.raises(SignatureError, match="missing X-Razorpay-Signature"):
        scheme.verify({}, body)
    headers = {k.lower(): v for k, v in payloads.razorpay_headers(body, SECRET, "e").items()}
    assert scheme.verify(headers, body).delivery_id == "e"
    del headers["x-razorpay-event-id"]
    assert scheme.verify(headers, body).delivery_id is None


def test_errors_never_carry_the_secret_or_expected_signature() -> None:
    body = b'{"a":1}'
    expected = payloads.razorpay_headers(body, SECRET, "e")["X-Razorpay-Signature"]
    with pytest.raises(SignatureError) as info:
        RazorpayScheme([SECRET]).verify({"X-Razorpay-Signature": "00"}, body)
    assert SECRET not in str(info.value)
    assert expected not in str(info.value)


def test_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        RazorpayScheme([])
    with pytest.raises(ConfigurationError):
        GitHubScheme([""])


# -- Standard Webhooks --------------------------------------------------------------------

WHSEC = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0001").decode()


def _std_headers(body: bytes, secret: str, msg_id: str, when: datetime) -> dict[str, str]:
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def test_standard_webhooks_agrees_with_the_official_package() -> None:
    body = payloads.dumps({"type": "invoice.paid", "data": {"id": "inv_1", "user_id": "u1"}})
    now = datetime.now(tz=UTC)
    headers = _std_headers(body, WHSEC, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now)
    standardwebhooks.Webhook(WHSEC).verify(body, headers)  # the reference accepts it
    got = StandardWebhooksScheme([WHSEC]).verify(headers, body)
    assert got.delivery_id == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
    # without the whsec_ prefix too, and with a rotated list
    bare = WHSEC.removeprefix("whsec_")
    other = "whsec_" + base64.b64encode(b"another-key").decode()
    assert StandardWebhooksScheme([other, bare]).verify(headers, body).delivery_id


def test_standard_webhooks_rejects_what_the_reference_rejects() -> None:
    body = b'{"type":"x"}'
    now = datetime.now(tz=UTC)
    scheme = StandardWebhooksScheme([WHSEC])
    headers = _std_headers(body, WHSEC, "msg_1", now)

    tampered = b'{"type":"y"}'
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(WHSEC).verify(tampered, headers)
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify(headers, tampered)

    stale = _std_headers(body, WHSEC, "msg_1", datetime.fromtimestamp(time.time() - 600, UTC))
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(WHSEC).verify(body, stale)
    with pytest.raises(SignatureError, match="tolerance"):
        scheme.verify(stale, body)
    future = _std_headers(body, WHSEC, "msg_1", datetime.fromtimestamp(time.time() + 600, UTC))
    with pytest.raises(SignatureError, match="tolerance"):
        scheme.verify(future, body)

    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(SignatureError, match=f"missing {missing}"):
            scheme.verify(partial, body)
    with pytest.raises(SignatureError, match="no v1"):
        scheme.verify({**headers, "webhook-signature": "v2,abc"}, body)
    # several signatures in the header: one match is enough
    multi = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert scheme.verify(multi, body).delivery_id == "msg_1"


# -- GitHub, Stripe, plain HMAC ------------------------------------------------------------


def test_github() -> None:
    body = payloads.dumps(payloads.github_push())
    scheme = GitHubScheme(["gh-secret"])
    headers = payloads.github_headers(body, "gh-secret", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    got = scheme.verify(headers, body)
    assert got.delivery_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert got.event_type == "push"
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify(payloads.github_headers(body, "nope", "d"), body)
    with pytest.raises(SignatureError, match="missing X-Hub-Signature-256"):
        scheme.verify({"X-GitHub-Delivery": "d"}, body)
    with pytest.raises(SignatureError, match="sha256="):
        scheme.verify({"X-Hub-Signature-256": "sha1=abc"}, body)


def test_stripe() -> None:
    secret = "whsec_test_stripe"
    body = payloads.dumps(payloads.stripe_event())
    scheme = StripeScheme([secret], tolerance_seconds=300)
    got = scheme.verify(payloads.stripe_headers(body, secret), body)
    assert got.delivery_id is None
    assert got.payload_id_field == "id"
    with pytest.raises(SignatureError, match="tolerance"):
        scheme.verify(payloads.stripe_headers(body, secret, timestamp=int(time.time()) - 301), body)
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify(payloads.stripe_headers(body, "whsec_other"), body)
    with pytest.raises(SignatureError, match="missing Stripe-Signature"):
        scheme.verify({}, body)
    with pytest.raises(SignatureError, match="exactly one t="):
        scheme.verify({"Stripe-Signature": "v1=abc"}, body)
    with pytest.raises(SignatureError, match="malformed"):
        scheme.verify({"Stripe-Signature": "t=soon,v1=abc"}, body)
    # extra v1 (rotation on Stripe's side) and v0 entries are fine
    good = payloads.stripe_headers(body, secret)["Stripe-Signature"]
    assert scheme.verify({"Stripe-Signature": good + ",v1=00,v0=ff"}, body)


@pytest.mark.parametrize(
    ("algorithm", "encoding", "prefix"),
    [
        ("sha256", "hex", ""),
        ("sha1", "hex", "sha1="),
        ("sha512", "base64", ""),
        ("sha256", "base64", "v1="),
    ],
)
def test_plain_hmac(algorithm: str, encoding: str, prefix: str) -> None:
    body = b'{"type":"thing.happened","id":1}'
    scheme = HmacScheme(
        ["k1", "k2"],
        header="X-Acme-Signature",
        algorithm=algorithm,  # type: ignore[arg-type]
        encoding=encoding,  # type: ignore[arg-type]
        prefix=prefix,
        id_header="X-Acme-Delivery",
    )
    kw = {"header": "X-Acme-Signature", "algorithm": algorithm, "encoding": encoding}
    headers = payloads.hmac_headers(body, "k2", prefix=prefix, **kw)
    assert scheme.verify({**headers, "X-Acme-Delivery": "d-1"}, body).delivery_id == "d-1"
    assert scheme.verify(headers, body).delivery_id is None
    with pytest.raises(SignatureError, match="does not match"):
        scheme.verify(payloads.hmac_headers(body, "k3", prefix=prefix, **kw), body)
    with pytest.raises(SignatureError, match="missing X-Acme-Signature"):
        scheme.verify({}, body)
    if prefix:
        unprefixed = payloads.hmac_headers(body, "k2", **kw)
        with pytest.raises(SignatureError, match="must start with"):
            scheme.verify(unprefixed, body)


def test_body_digest_is_stable_and_distinct() -> None:
    assert body_digest(b"a") == body_digest(b"a")
    assert body_digest(b"a") != body_digest(b"b")
