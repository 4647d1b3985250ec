"""Durability with real processes: a worker killed mid-job, the whole server killed with jobs queued, a graceful
stop with a job running, and bounded attempts for a job whose worker keeps dying.

Each test runs its own ``photomaker serve --tiny`` on its own data dir (lease 3 s, so lost jobs come back fast).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from live_server import API_KEY, APP, LiveServer
from helpers import stored_output, stored_request
from photomaker_server.api.app import build_context, create_app
from photomaker_server.api.auth import owner_id
from photomaker_server.deployment import open_deployment
from photomaker_server.jobs.records import JobStatus
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.settings import APP_ID, Settings
from service.svc import Api, messages, small


def _restart(old: LiveServer, tiny_root) -> LiveServer:  # noqa: ANN001
    """A new server on the same data dir and port (the URLs handed out before stay valid)."""
    new = LiveServer(old.data_dir, tiny_root)
    new.port = old.port
    return new.start()


def _worker_pid(server: LiveServer) -> int:
    """The spawned worker's pid. (``LiveServer.worker_pids`` also lists multiprocessing's resource tracker.)"""
    pids = [pid for pid in server.worker_pids() if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(pids) == 1, pids
    return pids[0]


def _db_status(data_dir, request_id: str) -> tuple[str, str | None]:  # noqa: ANN001
    db = sqlite3.connect(data_dir / "jobs.db")
    try:
        return db.execute("select status, error_type from jobs where id = ?", (request_id,)).fetchone()
    finally:
        db.close()


def test_worker_killed_mid_job_is_restarted_and_the_job_retried(tiny_root, tmp_path):
    server = LiveServer(tmp_path / "data", tiny_root).start()
    try:
        api = Api(server)
        request_id = api.long_job(30, seed=3)
        assert api.wait_for_log(request_id, "Step ")["status"] == "IN_PROGRESS"
        worker_pid = _worker_pid(server)
        os.kill(worker_pid, signal.SIGKILL)

        # Not ready while the replacement loads: the dead worker's heartbeat is not taken for a live one.
        deadline, saw_not_ready = time.time() + 8, False
        while time.time() < deadline and not saw_not_ready:
            saw_not_ready = server.client(None).get("/ready").status_code == 503
            time.sleep(0.2)
        assert saw_not_ready, "/ready kept answering 200 after the only worker died"

        final = api.wait(request_id, timeout=120)
        assert final.get("error") is None, final
        lines = messages(final)
        assert "Worker lost; retrying (attempt 2 of 3)" in lines, lines
        assert any(m.startswith("Started on worker") and m.endswith("(attempt 2 of 3)") for m in lines), lines
        assert lines.count("Step 30/30") == 1 and lines[-1] == "Completed"
        result = api.result(request_id).json()
        assert httpx.get(result["images"][0]["url"]).status_code == 200
        new_pid = _worker_pid(server)
        assert new_pid != worker_pid
        assert server.client(None).get("/ready").status_code == 200
        # The replacement serves new requests as usual.
        assert api.run(small(seed=4))[1]["images"]
    finally:
        server.stop()


def test_a_worker_killed_with_a_prefetched_job_loses_neither(tiny_root, tmp_path):
    """kill -9 of a worker holding the job on its device and the next one (prefetched: claimed, inputs read): both
    leases run out, both jobs are requeued and run by the restarted worker."""
    server = LiveServer(tmp_path / "data", tiny_root).start()
    try:
        api = Api(server)
        running = api.long_job(60, seed=3)
        prefetched = api.submit(small(seed=4))
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        body = api.wait_for_log(prefetched, "Claimed by worker")  # claimed while the other is on the device
        assert body["status"] == "IN_PROGRESS" and not any(m.startswith("Step ") for m in messages(body)), body
        os.kill(_worker_pid(server), signal.SIGKILL)
        for request_id in (running, prefetched):
            final = api.wait(request_id, timeout=120)
            assert final.get("error") is None, final
            lines = messages(final)
            assert "Worker lost; retrying (attempt 2 of 3)" in lines and lines[-1] == "Completed", lines
    finally:
        server.stop()


def test_server_killed_with_jobs_queued_loses_nothing(tiny_root, tmp_path):
    first = LiveServer(tmp_path / "data", tiny_root).start()
    try:
        api = Api(first)
        done, done_result = api.run(small(seed=1))
        running = api.long_job(30, seed=2)
        queued = [api.submit(small(seed=s)) for s in (3, 4, 5)]
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
        cancelled = api.submit(small(seed=6))
        assert api.cancel(cancelled).status_code == 202
    finally:
        first.kill()  # kill -9 the server and its worker
    assert _db_status(first.data_dir, running)[0] == JobStatus.RUNNING.value

    second = _restart(first, tiny_root)
    try:
        api = Api(second)
        for request_id in (running, *queued):
            final = api.wait(request_id, timeout=120)
            assert final.get("error") is None, final
            assert api.result(request_id).status_code == 200
        assert "Worker lost; retrying (attempt 2 of 3)" in messages(api.status(running))
        # What was finished before the crash is still there, files included; the cancelled one stays cancelled.
        assert api.result(done["request_id"]).json() == done_result
        assert httpx.get(done_result["images"][0]["url"]).status_code == 200
        assert api.status(cancelled)["error_type"] == "client_cancelled"
    finally:
        second.stop()


def test_graceful_stop_with_a_job_running_then_restart(tiny_root, tmp_path):
    first = LiveServer(tmp_path / "data", tiny_root).start()
    try:
        api = Api(first)
        running = api.long_job(30, seed=2)
        queued = [api.submit(small(seed=s)) for s in (3, 4, 5)]
        assert api.wait_for_log(running, "Step ")["status"] == "IN_PROGRESS"
    finally:
        # Longer than the server's own grace period (60 s) plus its kill margin: the job in hand must be let finish.
        first.stop(signal.SIGINT, timeout=120)
    assert first.process.returncode == 0, first.log()[-3000:]
    # The worker finished the job in hand before exiting (SIGTERM: no new claims); what was queued is still queued
    # or, claimed in the moment before the worker got the signal, finished.
    assert _db_status(first.data_dir, running) == (JobStatus.COMPLETED.value, None)
    states = [_db_status(first.data_dir, rid) for rid in queued]
    assert set(states) <= {(JobStatus.QUEUED.value, None), (JobStatus.COMPLETED.value, None)}, states
    assert (JobStatus.QUEUED.value, None) in states, states

    second = _restart(first, tiny_root)
    try:
        api = Api(second)
        for request_id in queued:
            assert api.wait(request_id, timeout=120).get("error") is None
        result = api.result(running)
        assert result.status_code == 200
        assert httpx.get(result.json()["images"][0]["url"]).status_code == 200
        assert "Worker lost" not in " ".join(messages(api.status(running)))
    finally:
        second.stop()


def test_a_job_whose_worker_keeps_dying_ends_with_runner_server_error(tmp_path):
    """Three leases run out (three dead workers): the job is given up, and fal's error shape says so."""
    now = [1_000_000.0]
    settings = Settings(data_dir=tmp_path, api_keys=[API_KEY], tiny=True)
    store = SQLJobStore(settings.db_path, clock=lambda: now[0])
    job = store.submit(owner_id(API_KEY), APP_ID, stored_request(), max_attempts=3)
    for attempt in (1, 2, 3):
        claimed = store.claim(f"doomed-worker-{attempt}", lease_seconds=3)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
        assert store.claim("another-worker", lease_seconds=3) is None  # leased: nobody else gets it
        now[0] += 2
        assert store.requeue_expired_leases() == []  # lease still running
        now[0] += 2
        assert store.requeue_expired_leases() == [job.id]
        # The dead worker's late answer is refused: it no longer holds the lease.
        assert store.complete(job.id, f"doomed-worker-{attempt}", stored_output()) is False
    final = store.get(job.id)
    assert final.status == JobStatus.COMPLETED and final.error_type == "runner_server_error"
    assert store.claim("late-worker", lease_seconds=3) is None
    lines = [line.message for line in store.logs(job.id)]
    assert "Worker lost; retrying (attempt 2 of 3)" in lines and "Worker lost; retrying (attempt 3 of 3)" in lines
    assert lines[-1] == "The request failed 3 times (the worker stopped while running it)"

    app = create_app(ctx=build_context(settings, replace(open_deployment(settings), store=store)), housekeeping=False)
    client = TestClient(app, headers={"Authorization": f"Key {API_KEY}"})
    status = client.get(f"/{APP}/requests/{job.id}/status", params={"logs": "1"}).json()
    assert status["status"] == "COMPLETED" and status["error_type"] == "runner_server_error"
    assert status["logs"][-1]["level"] == "ERROR"
    result = client.get(f"/{APP}/requests/{job.id}")
    assert result.status_code == 500 and result.headers["x-fal-error-type"] == "runner_server_error"
    assert result.json() == {"detail": final.error, "error_type": "runner_server_error"}
    store.close()
