"""Status and result polls: literal paths, the per-process job cache (kept fresh by wake-ups from any process),
per-key isolation, read-your-own cancel, and the 503 while the database is down."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from photomaker_server.api.app import build_context, create_app
from photomaker_server.api.job_cache import JobCache
from photomaker_server.deployment import open_deployment
from photomaker_server.jobs.records import Job, JobStatus, StoreUnavailable
from photomaker_server.jobs.wakeups import WAKE_ALL, NullWakeups
from photomaker_server.jobs.health import DatabaseHealth
from photomaker_server.settings import APP_ID, Settings

from helpers import FlakyStore, stored_output

KEY, OTHER = "polls-key-a", "polls-key-b"
REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/faces.zip"}


def _settings(tmp_path, database_url: str | None = None, **kw) -> Settings:
    extra = {"database_url": database_url} if database_url else {}
    return Settings(data_dir=tmp_path, api_keys=[KEY, OTHER], public_base_url="https://pm.example.com", **extra, **kw)


def _client(app, key: str = KEY) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Key {key}"})


def _status(client: TestClient, job_id: str) -> dict:
    answer = client.get(f"/{APP_ID}/requests/{job_id}/status")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-fal-request-id"] == job_id
    return answer.json()


def _wait_for(client: TestClient, job_id: str, status: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if _status(client, job_id)["status"] == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{job_id} not {status} within {within}s")


def test_a_change_made_by_another_process_reaches_the_cached_status_through_its_wake_up(tmp_path, database_url):
    """The worker side runs on its own deployment (store + wake-ups), as a worker process would: its claim and
    completion announce ``job:<id>``, which must drop this API's cached answer long before the cache's TTL."""
    settings = _settings(tmp_path, database_url)
    app = create_app(settings, housekeeping=False)
    ctx = app.state.ctx
    ctx.jobs = JobCache(ctx.wakeups, ctx.store.health, ttl_s=60)  # only a wake-up can refresh an entry now
    worker = open_deployment(settings)
    try:
        with _client(app) as client, ctx.wakeups.subscribe("work") as submitted:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            # The submit's own `work` wake-up (on PostgreSQL a NOTIFY, heard a moment after the commit) drops queued
            # entries: let it arrive first, so that what follows tests the cache rather than that race.
            assert submitted.wait(5)
            assert _status(client, job_id)["status"] == "IN_QUEUE"
            hits = ctx.jobs.hits
            assert _status(client, job_id)["status"] == "IN_QUEUE"
            assert ctx.jobs.hits == hits + 1  # answered from memory
            assert worker.store.claim("w", 30).id == job_id
            assert _wait_for(client, job_id, "IN_PROGRESS", within=5) < 5
            assert worker.store.complete(job_id, "w", stored_output(), 1.5)
            _wait_for(client, job_id, "COMPLETED", within=5)
            body = _status(client, job_id)
            assert body["metrics"] == {"inference_time": 1.5}
            assert body["status_url"] == f"https://pm.example.com/{APP_ID}/requests/{job_id}/status"
            result = client.get(f"/{APP_ID}/requests/{job_id}")
            assert result.status_code == 200 and result.json()["seed"] == 1
            assert result.headers["x-fal-request-id"] == job_id
    finally:
        worker.close()
        ctx.wakeups.close()
        ctx.store.close()


def test_without_a_wake_up_the_cached_answer_stands_until_its_ttl(tmp_path):
    """The control for the test above: a change nobody announces is seen only after the TTL (so the cache really
    answers, and the TTL really bounds a lost wake-up)."""
    # Polls answered at once: a held poll would wait out the (never coming) wake-up and then read the database.
    app = create_app(_settings(tmp_path, status_hold_s=0), housekeeping=False)
    ctx = app.state.ctx
    ctx.jobs = JobCache(ctx.wakeups, ctx.store.health, ttl_s=0.6)
    from photomaker_server.jobs.factory import open_job_store

    silent = open_job_store(ctx.store.url)  # no publish: its changes announce nothing
    try:
        with _client(app) as client:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            silent.claim("w", 30)
            assert _status(client, job_id)["status"] == "IN_PROGRESS"
            silent.complete(job_id, "w", stored_output(), 1.0)
            assert _status(client, job_id)["status"] == "IN_PROGRESS"  # from memory
            time.sleep(0.7)
            assert _status(client, job_id)["status"] == "COMPLETED"
    finally:
        silent.close()
        ctx.wakeups.close()
        ctx.store.close()


def test_the_result_is_never_an_unfinished_job_from_memory(tmp_path):
    """A client that saw COMPLETED (from another replica, the wake-up not yet here) asks this process for the
    result: an unfinished job in memory is read again, so the answer is the result, not "still in progress"."""
    app = create_app(_settings(tmp_path, status_hold_s=0), housekeeping=False)
    ctx = app.state.ctx
    ctx.jobs = JobCache(ctx.wakeups, ctx.store.health, ttl_s=60)
    from photomaker_server.jobs.factory import open_job_store

    silent = open_job_store(ctx.store.url)  # no publish: this process never hears of the completion
    try:
        with _client(app) as client:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            silent.claim("w", 30)
            early = client.get(f"/{APP_ID}/requests/{job_id}")
            assert early.status_code == 400 and early.json()["error_type"] == "request_in_progress"
            assert _status(client, job_id)["status"] == "IN_PROGRESS"
            silent.complete(job_id, "w", stored_output(), 1.0)
            assert _status(client, job_id)["status"] == "IN_PROGRESS"  # the status may lag (from memory)...
            result = client.get(f"/{APP_ID}/requests/{job_id}")
            assert result.status_code == 200 and result.json()["seed"] == 1  # ...the result never does
            hits = ctx.jobs.hits
            assert client.get(f"/{APP_ID}/requests/{job_id}").status_code == 200
            assert ctx.jobs.hits == hits + 1  # a finished job's result is answered from memory
    finally:
        silent.close()
        ctx.wakeups.close()
        ctx.store.close()


def test_another_keys_request_is_404_from_memory_too_and_logs_are_always_read(tmp_path):
    app = create_app(_settings(tmp_path), housekeeping=False)
    ctx = app.state.ctx
    try:
        with _client(app) as client, _client(app, OTHER) as other:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            ctx.store.claim("w", 30)
            assert _status(client, job_id)["status"] == "IN_PROGRESS"
            assert ctx.jobs.lookup(job_id) is not None  # cached now
            for path in (f"/{APP_ID}/requests/{job_id}/status", f"/{APP_ID}/requests/{job_id}"):
                answer = other.get(path)
                assert answer.status_code == 404 and answer.headers["x-fal-error-type"] == "not_found", answer.text
            assert client.get(f"/{APP_ID}/requests/{job_id}/status", headers={"Authorization": "Key nope"}).status_code == 401
            ctx.store.append_log(job_id, "Step 1/2")  # a log line announces no status change
            logs = client.get(f"/{APP_ID}/requests/{job_id}/status", params={"logs": "1"}).json()["logs"]
            assert [line["message"] for line in logs][-1] == "Step 1/2"
            assert _status(client, job_id)["logs"] is None
            assert client.get(f"/{APP_ID}/requests/{job_id}").status_code == 400  # still in progress
    finally:
        ctx.wakeups.close()
        ctx.store.close()


def test_a_cancel_is_seen_by_the_next_poll_of_this_process(tmp_path):
    app = create_app(_settings(tmp_path), housekeeping=False)
    ctx = app.state.ctx
    ctx.wakeups.publish = lambda topic: None  # the cancel's own wake-up never arrives: only forget() can help
    ctx.jobs = JobCache(ctx.wakeups, ctx.store.health, ttl_s=60)
    try:
        with _client(app) as client:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            assert _status(client, job_id)["status"] == "IN_QUEUE"
            assert client.put(f"/{APP_ID}/requests/{job_id}/cancel").status_code == 202
            body = _status(client, job_id)
            assert body["status"] == "COMPLETED" and body["error_type"] == "client_cancelled", body
    finally:
        ctx.wakeups.close()
        ctx.store.close()


def test_a_poll_while_the_database_is_down_is_a_503_not_a_cached_answer(tmp_path):
    settings = _settings(tmp_path, database_wait_s=0.3)
    deployment = open_deployment(settings)
    store = FlakyStore(deployment.store)
    app = create_app(ctx=build_context(settings, replace(deployment, store=store)), housekeeping=False)
    try:
        with _client(app) as client:
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            assert _status(client, job_id)["status"] == "IN_QUEUE"
            store.down.set()
            with pytest.raises(StoreUnavailable):
                store.ping()  # the process knows the database is down (any failed call tells it)
            for path in (f"/{APP_ID}/requests/{job_id}/status", f"/{APP_ID}/requests/{job_id}", "/ready"):
                answer = client.get(path)
                assert answer.status_code == 503 and answer.json()["error_type"] == "service_unavailable", path
            store.down.clear()
            store.ping()
            assert _status(client, job_id)["status"] == "IN_QUEUE"
    finally:
        deployment.close()


def test_the_api_docs_show_the_literal_queue_paths_and_other_apps_are_404(tmp_path):
    app = create_app(_settings(tmp_path), housekeeping=False)
    try:
        with _client(app) as client:
            paths = client.get("/openapi.json").json()["paths"]
            for path, method in ((f"/{APP_ID}", "post"), (f"/{APP_ID}/requests/{{request_id}}/status", "get"),
                                 (f"/{APP_ID}/requests/{{request_id}}/status/stream", "get"),
                                 (f"/{APP_ID}/requests/{{request_id}}", "get"),
                                 (f"/{APP_ID}/requests/{{request_id}}/cancel", "put"), (f"/run/{APP_ID}", "post")):
                assert method in paths[path], path
            assert paths[f"/{APP_ID}/requests/{{request_id}}/status"]["get"]["security"] == [{"FalKey": []}]
            assert [p["name"] for p in paths[f"/{APP_ID}/requests/{{request_id}}/status"]["get"]["parameters"]] == [
                "request_id", "logs"]
            assert not any("{owner_ns}" in path for path in paths)
            for method, path in (("POST", "/fal-ai/other"), ("GET", "/acme/photomaker/requests/x/status"),
                                 ("GET", "/acme/photomaker/requests/x"), ("PUT", "/acme/x/requests/x/cancel"),
                                 ("POST", "/run/acme/photomaker")):
                answer = client.request(method, path, json=REQUEST)
                assert answer.status_code == 404 and "Unknown app" in answer.json()["detail"], (path, answer.text)
            assert client.post("/fal-ai/other", json=REQUEST, headers={"Authorization": ""}).status_code == 401
            # The JS client's proxy reaches the literal routes.
            job_id = client.post(f"/{APP_ID}", json=REQUEST).json()["request_id"]
            proxied = client.get("/api/fal/proxy", headers={
                "x-fal-target-url": f"https://queue.fal.run/{APP_ID}/requests/{job_id}/status"})
            assert proxied.status_code == 200 and proxied.json()["status"] == "IN_QUEUE"
    finally:
        app.state.ctx.wakeups.close()
        app.state.ctx.store.close()


def _job(job_id: str, status: JobStatus) -> Job:
    return Job(id=job_id, owner="o", app=APP_ID, input=None, status=status, priority=1, created_at=0.0,
               started_at=None, finished_at=None, start_deadline=None, attempts=0, max_attempts=3, lease_owner=None,
               lease_expires_at=None, cancel_requested=False, result=None, error=None, error_type=None,
               inference_time=None, webhook_url=None)


def test_job_cache_drops_what_an_event_made_stale_and_never_keeps_a_read_that_raced_one():
    wakeups = NullWakeups()
    health = DatabaseHealth()
    cache = JobCache(wakeups, health)
    version = cache.version()
    cache.keep(version, _job("q1", JobStatus.QUEUED), {"status": "IN_QUEUE"})
    cache.keep(version, _job("r1", JobStatus.RUNNING), {"status": "IN_PROGRESS"})
    assert cache.lookup("q1") and cache.lookup("r1")
    wakeups.publish("logs:r1")  # no status change
    assert cache.lookup("q1") and cache.lookup("r1")
    wakeups.publish("job:other")  # a claim elsewhere moves every queued job's position
    assert cache.lookup("q1") is None and cache.lookup("r1") is not None
    cache.keep(cache.version(), _job("q1", JobStatus.QUEUED), {"status": "IN_QUEUE"})
    wakeups.publish("work")  # a submit may go ahead of it
    assert cache.lookup("q1") is None and cache.lookup("r1") is not None
    wakeups.publish("job:r1")
    assert cache.lookup("r1") is None
    stale = cache.version()
    wakeups.publish("job:r1")  # arrives while r1 is being read
    cache.keep(stale, _job("r1", JobStatus.RUNNING))
    assert cache.lookup("r1") is None
    cache.keep(cache.version(), _job("r1", JobStatus.COMPLETED))
    health.failed("down")
    assert cache.lookup("r1") is None  # never answered from memory while the database is known to be down
    health.succeeded()
    assert cache.lookup("r1") is not None
    wakeups._hub.fan_out(WAKE_ALL)  # what a transport sends after missed events: forget everything
    assert cache.lookup("r1") is None
    cache.close()
    wakeups.close()


def test_job_cache_keeps_no_result_with_megabytes_of_inline_images():
    """A ``sync_mode`` result holds its images as data URIs: thousands of those kept would be gigabytes, so such a
    job is read from the database at each poll; a result of stored files is kept."""
    from photomaker_server.api.job_cache import MAX_INLINE_CHARS

    wakeups = NullWakeups()
    cache = JobCache(wakeups, DatabaseHealth())
    inline = stored_output(urls=("data:image/png;base64," + "A" * MAX_INLINE_CHARS,))
    cache.keep(cache.version(), replace(_job("big", JobStatus.COMPLETED), result=inline))
    cache.keep(cache.version(), replace(_job("small", JobStatus.COMPLETED), result=stored_output("tok/out.png")))
    assert cache.lookup("big") is None and cache.lookup("small") is not None
    cache.close()
    wakeups.close()
