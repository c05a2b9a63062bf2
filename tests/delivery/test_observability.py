"""What an operator sees of deliveries: the event's trace (``handled`` by the fan-out,
one ``delivery.attempt`` per attempt) and the metrics the dashboard reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import Response

from eventmill.app import resources_of
from tests.delivery.support import delivery_settings, receiver, service


async def test_the_trace_shows_which_endpoints_got_the_event_with_which_attempts(
    tmp_path: Path, store_url: str
) -> None:
    def script(request: Request, n: int) -> Response:
        if request.url.path == "/flaky" and n == 0:
            return Response(b"busy", status_code=503)
        return Response(b"ok")

    async with receiver(script) as rec, service(delivery_settings(tmp_path, store_url)) as svc:
        ok = await svc.create_endpoint(url=rec.url("/ok"), user_id="u1")
        flaky = await svc.create_endpoint(url=rec.url("/flaky"), user_id="u1")
        await svc.create_endpoint(url=rec.url("/other"), user_id="u2")
        [event_id] = await svc.publish({"event_name": "order.created", "user_id": "u1"})
        await svc.wait_delivery(
            {"event_id": event_id},
            lambda ds: len(ds) == 2 and all(d["status"] == "succeeded" for d in ds),
        )
        journal = resources_of(svc.app).require_store().journal
        async with asyncio.timeout(20):
            while True:
                await journal.flush()
                trace = await svc.get(f"/v1/traces/{event_id}")
                attempts = [h for h in trace["hops"] if h["hop"] == "delivery.attempt"]
                if len(attempts) == 3:
                    break
                await asyncio.sleep(0.05)
        [handled] = [h for h in trace["hops"] if h["hop"] == "handled"]
        assert handled["detail"] == {"group": "delivery", "endpoints": 2}
        by_endpoint: dict[str, list[dict[str, object]]] = {}
        for hop in attempts:
            by_endpoint.setdefault(str(hop["detail"]["endpoint_id"]), []).append(hop["detail"])
        assert set(by_endpoint) == {ok["id"], flaky["id"]}
        assert [(d["attempt"], d["status_code"]) for d in by_endpoint[flaky["id"]]] == [
            (1, 503),
            (2, 200),
        ]
        [first] = by_endpoint[ok["id"]]
        assert first["outcome"] == "success"
        assert isinstance(first["latency_ms"], float)
        assert str(first["delivery_id"]).startswith("dlv_")
        assert len(rec.at("/other")) == 0


async def test_the_dashboard_metrics_count_attempts_by_outcome(
    tmp_path: Path, store_url: str
) -> None:
    async with (
        receiver(lambda r, n: Response(b"no", status_code=500 if n == 0 else 200)) as rec,
        service(delivery_settings(tmp_path, store_url)) as svc,
    ):
        await svc.create_endpoint(url=rec.url(), user_id="u1")
        [event_id] = await svc.publish({"event_name": "order.created", "user_id": "u1"})
        await svc.wait_delivery(
            {"event_id": event_id}, lambda ds: bool(ds) and ds[0]["status"] == "succeeded"
        )
        text = (await svc.client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    attempts = {
        s.labels["outcome"]: s.value
        for s in families["eventmill_delivery_attempts"].samples
        if s.name.endswith("_total")
    }
    assert set(attempts) == {"success", "http_error", "timeout", "connection_error", "refused"}
    assert attempts["success"] == 1
    assert attempts["http_error"] == 1
    assert families["eventmill_delivery_attempt_duration_seconds"].type == "histogram"
    [count] = [
        s.value
        for s in families["eventmill_delivery_attempt_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert count == 2
    assert families["eventmill_delivery_dead_lettered"].type == "counter"
    assert families["eventmill_delivery_due_deliveries"].type == "gauge"
