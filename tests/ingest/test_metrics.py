"""Ingest's metrics as ``/metrics`` shows them: every answered webhook and publish request
counted once by outcome and timed, every accepted publish counted on the bus, and sources
nobody configured counted in one series, not one per name a client makes up."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import payloads
from tests.ingest.support import RAZORPAY_SECRET, running_app, settings_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _samples(client: httpx.AsyncClient) -> Samples:
    text = (await client.get("/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _received(samples: Samples, source: str, outcome: str) -> float:
    key = (
        "eventmill_ingest_webhooks_received_total",
        (("outcome", outcome), ("source", source)),
    )
    return samples.get(key, 0.0)


def _timed(samples: Samples, source: str) -> float:
    return samples.get(
        ("eventmill_ingest_request_duration_seconds_count", (("source", source),)), 0
    )


async def test_webhooks_are_counted_by_outcome_and_timed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'e.db'}")
    async with running_app(settings) as (_, client):
        body = payloads.dumps(payloads.RAZORPAY_SAMPLES["payment.captured"]())
        headers = payloads.razorpay_headers(body, RAZORPAY_SECRET, f"evt_{uuid.uuid4().hex[:14]}")
        assert (await client.post("/webhooks/razorpay", content=body, headers=headers)).is_success
        assert (await client.post("/webhooks/razorpay", content=body, headers=headers)).is_success
        forged = {**headers, "X-Razorpay-Signature": "0" * 64}
        refused = await client.post("/webhooks/razorpay", content=body, headers=forged)
        assert refused.status_code == 401
        made_up = [f"made_up_{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for name in made_up:
            assert (await client.post(f"/webhooks/{name}", content=b"{}")).status_code == 404

        samples = await _samples(client)
        assert _received(samples, "razorpay", "accepted") == 1
        assert _received(samples, "razorpay", "duplicate") == 1
        assert _received(samples, "razorpay", "rejected") == 1
        assert _timed(samples, "razorpay") == 3
        assert _received(samples, "unconfigured", "rejected") == 3
        assert _timed(samples, "unconfigured") == 3
        assert not any(name in str(key) for key in samples for name in made_up)
        published = ("eventmill_bus_publishes_total", (("outcome", "ok"), ("topic", "events")))
        assert samples[published] == 1  # the duplicate is not published again
        publish_timed = (
            "eventmill_bus_publish_duration_seconds_count",
            (("topic", "events"),),
        )
        assert samples[publish_timed] == 1
