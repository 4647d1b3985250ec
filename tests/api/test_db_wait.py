"""While the job database reconnects, requests wait for it (up to ``database_wait_s``) instead of failing; probes
and ``/metrics`` answer at once; past the wait the answer is the 503 a client can retry, never a 500."""

from __future__ import annotations

import time
from dataclasses import replace

import anyio
import pytest
from starlette.testclient import TestClient

from photomaker_server.api.app import build_context, create_app
from photomaker_server.api.db_wait import UNAVAILABLE_MARK, DatabaseProbe, DatabaseWaitMiddleware
from photomaker_server.deployment import open_deployment
from photomaker_server.jobs.health import DatabaseHealth
from photomaker_server.jobs.records import StoreUnavailable
from photomaker_server.settings import APP_ID, Settings

from helpers import FlakyStore

KEY = "db-wait-test-key"
REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/faces.zip"}


@pytest.fixture
def served(tmp_path):
    def make(wait_s: float) -> tuple[TestClient, FlakyStore]:
        settings = Settings(data_dir=tmp_path, api_keys=[KEY], database_wait_s=wait_s)
        deployment = open_deployment(settings)
        store = FlakyStore(deployment.store)
        app = create_app(ctx=build_context(settings, replace(deployment, store=store)), housekeeping=False)
        made.append(deployment)
        return TestClient(app, headers={"Authorization": f"Key {KEY}"}), store

    made: list = []
    yield make
    for deployment in made:
        deployment.close()


def test_a_submit_during_an_outage_waits_and_is_accepted_once(served):
    client, store = served(wait_s=20)
    store.outage(1.5)
    started = time.monotonic()
    answer = client.post(f"/{APP_ID}", json=REQUEST)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started >= 1.2  # it waited for the database, then ran with the body it was sent
    request_id = answer.json()["request_id"]
    assert client.get(f"/{APP_ID}/requests/{request_id}/status").json()["status"] == "IN_QUEUE"
    assert store.counts()["queued"] == 1  # accepted once
    assert store.health.up and store.health.reconnects == 1


def test_past_the_wait_the_answer_is_503_with_retry_after(served):
    client, store = served(wait_s=0.5)
    store.outage(5)
    started = time.monotonic()
    answer = client.post(f"/{APP_ID}", json=REQUEST)
    waited = time.monotonic() - started
    assert answer.status_code == 503 and answer.json()["error_type"] == "service_unavailable", answer.text
    assert int(answer.headers["Retry-After"]) > 0
    assert 0.4 <= waited < 4, waited
    store.down.clear()


def test_probes_and_metrics_answer_at_once_during_an_outage(served):
    client, store = served(wait_s=20)
    store.outage(10)
    started = time.monotonic()
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["error_type"] == "service_unavailable"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "photomaker_database_up 0.0" in metrics.text
    assert 'photomaker_database_reconnects_total{process="api"} 0.0' in metrics.text
    assert "photomaker_queue_depth" not in metrics.text  # not known now: absent, not repeated from memory
    assert time.monotonic() - started < 3
    store.down.clear()
    store.ping()
    after = client.get("/metrics").text
    assert "photomaker_database_up 1.0" in after and "photomaker_queue_depth 0.0" in after
    assert 'photomaker_database_reconnects_total{process="api"} 1.0' in after
    assert "photomaker_lease_expiries_total 0.0" in after and "photomaker_workers_lost_total 0.0" in after


def test_what_does_not_need_the_database_never_waits_for_it(served):
    client, store = served(wait_s=20)
    store.outage(10)
    with pytest.raises(StoreUnavailable):
        store.ping()  # the process knows the database is down
    started = time.monotonic()
    assert client.get("/.well-known/jwks.json").status_code == 200  # the signing keys are in memory
    assert client.get("/").status_code == 200  # the web page
    assert time.monotonic() - started < 3
    store.down.clear()


def test_a_body_in_many_chunks_reaches_the_app_once_per_run_and_in_full_again_after_a_wait():
    """Driven at the ASGI level, as a server delivers a large body: in several chunks. The body is kept as it is
    read (to be run again after the wait), and never served twice within one run."""
    chunks = [bytes([i]) * 70_000 for i in range(5)]
    runs: list[bytes] = []

    async def app(scope, receive, send):  # noqa: ANN001, ANN202 - a route that reads its body, then needs the db
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        runs.append(body)
        status = 200
        if len(runs) == 1:  # the first run finds the database down, as the exception handler would say it
            scope["state"][UNAVAILABLE_MARK] = True
            status = 503
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    health = DatabaseHealth()
    sent: list[dict] = []
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():  # noqa: ANN202 - the client stays connected: nothing more comes after the body
        if incoming:
            return incoming.pop(0)
        await anyio.sleep_forever()

    async def send(message):  # noqa: ANN001, ANN202
        sent.append(message)

    async def main() -> None:
        health.failed("connection refused")
        middleware = DatabaseWaitMiddleware(app, DatabaseProbe(health, health.succeeded), wait_s=10)
        await middleware({"type": "http", "path": "/fal-ai/photomaker", "state": {}}, receive, send)

    anyio.run(main)
    assert runs == [b"".join(chunks)] * 2  # both runs got the whole body, once
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]  # the 503 was held back
