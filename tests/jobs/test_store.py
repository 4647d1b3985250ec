"""The job store: queue order, leases, deadlines, cancellation, isolation, durability and concurrency.

Every test using the ``store`` or ``db_path`` fixture runs on SQLite and on PostgreSQL (see conftest.py)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

import sqlalchemy as sa

from helpers import stored_request, stored_output
from photomaker_server.jobs.protocol import JobStore
from photomaker_server.jobs.records import (
    CANCELLED_ERROR,
    REQUEST_TIMEOUT_ERROR,
    CancelOutcome,
    JobStatus,
    LeaseState,
    parse_priority,
)
from photomaker_server.contract.files import FileRef
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.jobs.sql.schema import jobs as jobs_table
from photomaker_server.webhooks import job_webhook_body

APP = "fal-ai/photomaker"


def submit(store: SQLJobStore, owner: str = "alice", **kwargs):
    return store.submit(owner, APP, stored_request(), **kwargs)


def body_of(store: SQLJobStore, delivery) -> bytes:
    """The webhook body the dispatcher would post for ``delivery`` (rendered from the job, as it does)."""
    return job_webhook_body(store.get(delivery.job_id, with_input=False))


# --- submit / get -----------------------------------------------------------------------------------------------


def test_submit_creates_a_queued_job_with_a_queued_log_line(store, clock):
    job = submit(store, priority="high", webhook_url="https://example.com/hook", max_attempts=5)
    assert job.status == JobStatus.QUEUED and not job.is_finished
    assert job.owner == "alice" and job.app == APP
    assert job.input == stored_request()
    assert job.priority == 2 and job.priority_name == "high"
    assert job.created_at == clock.t
    assert (job.attempts, job.max_attempts) == (0, 5)
    assert job.webhook_url == "https://example.com/hook"
    assert job.result is None and job.error is None and not job.cancel_requested
    assert len(job.id) == 36
    assert [line.message for line in store.logs(job.id)] == ["Request queued"]


def test_store_satisfies_the_protocol(store):
    def takes(s: JobStore) -> JobStore:
        return s

    assert takes(store) is store
    for name in [n for n in dir(JobStore) if not n.startswith("_")]:
        assert callable(getattr(store, name)), name


def test_priorities_parse():
    assert [parse_priority(p) for p in ("low", "normal", "HIGH", 0, 2)] == [0, 1, 2, 0, 2]
    for bad in ("urgent", 3, -1, True, ""):
        with pytest.raises(ValueError):
            parse_priority(bad)


def test_submit_rejects_bad_arguments(store):
    with pytest.raises(ValueError):
        submit(store, priority="urgent")
    with pytest.raises(ValueError):
        submit(store, max_attempts=0)


def test_get_is_owner_scoped(store):
    job = submit(store, owner="alice")
    assert store.get(job.id).id == job.id
    assert store.get(job.id, owner="alice").id == job.id
    assert store.get(job.id, owner="bob") is None
    assert store.get("no-such-id") is None


def test_get_can_skip_the_input(store):
    job = store.submit("alice", APP, stored_request())
    light = store.get(job.id, with_input=False)
    assert light.input is None
    assert light == dataclasses.replace(store.get(job.id), input=None)
    assert store.get(job.id, owner="bob", with_input=False) is None


def test_the_typed_request_round_trips(store):
    payload = stored_request(prompt="ein Foto von img 🙂", archive="https://example.com/ü.zip", seed=2**63 - 1,
                             image_size={"width": 512, "height": 768}, image_urls=[FileRef.stored("t/a.png")],
                             initial_image_url=FileRef.outside("data:image/png;base64,AAAA"), sync_mode=True)
    job = store.submit("alice", APP, payload)
    assert store.get(job.id).input == payload
    raw = json.loads(store.get(job.id).input.to_json())
    assert raw["image_urls"] == [{"key": "t/a.png"}] and raw["image_archive_url"] == {"url": "https://example.com/ü.zip"}


def test_a_claimed_job_whose_stored_request_cannot_be_read_fails_and_the_next_runs(store):
    broken, fine = submit(store), submit(store)
    with store._write() as conn:  # a row damaged by hand: not a StoredRequest
        conn.execute(jobs_table.update().where(jobs_table.c.id == broken.id).values(input='{"prompt": 5}'))
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == fine.id and claimed.input == stored_request()
    failed = store.get(broken.id, with_input=False)
    assert failed.status == JobStatus.COMPLETED and failed.error_type == "internal_error"


# --- queue order ------------------------------------------------------------------------------------------------


def test_claim_order_is_priority_then_first_come(store, clock):
    # Same timestamp for all: order must still be stable (submission order), not uuid order.
    low = submit(store, priority="low")
    n1 = submit(store)
    high = submit(store, priority="high")
    n2 = submit(store)
    n3 = submit(store)
    clock.advance(1)
    high2 = submit(store, priority="high")
    expected = [high, high2, n1, n2, n3, low]
    assert [store.queue_position(store.get(j.id)) for j in expected] == list(range(6))
    claimed = [store.claim("w", 30).id for _ in range(6)]
    assert claimed == [j.id for j in expected]
    assert store.claim("w", 30) is None


def test_older_jobs_run_first_within_a_priority(store, clock):
    first = submit(store)
    clock.advance(5)
    second = submit(store)
    assert store.queue_position(first) == 0
    assert store.queue_position(second) == 1
    assert store.claim("w", 30).id == first.id
    assert store.queue_position(store.get(second.id)) == 0


def test_queue_position_of_non_queued_jobs_is_zero(store):
    job = submit(store)
    running = store.claim("w", 30)
    assert store.queue_position(running) == 0
    store.complete(job.id, "w", stored_output(), 1.0)
    assert store.queue_position(store.get(job.id)) == 0


def test_queue_position_skips_jobs_that_will_expire(store, clock):
    doomed = submit(store, start_deadline=clock.t + 10)
    waiting = submit(store)
    assert store.queue_position(waiting) == 1
    clock.advance(11)
    assert store.queue_position(waiting) == 0
    assert store.get(doomed.id).status == JobStatus.QUEUED  # not failed until housekeeping runs


def test_claim_marks_running_with_a_lease(store, clock):
    job = submit(store)
    claimed = store.claim("worker-1", 30)
    assert claimed.id == job.id
    assert claimed.status == JobStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease_owner == "worker-1"
    assert claimed.lease_expires_at == clock.t + 30
    assert claimed.started_at == clock.t


# --- start deadlines --------------------------------------------------------------------------------------------


def test_expired_start_deadline_fails_the_job_before_claiming(store, clock):
    late = submit(store, priority="high", start_deadline=clock.t + 10, webhook_url="https://example.com/h")
    fine = submit(store, start_deadline=clock.t + 100)
    clock.advance(11)
    claimed = store.claim("w", 30)
    assert claimed.id == fine.id
    failed = store.get(late.id)
    assert failed.status == JobStatus.COMPLETED
    assert failed.error == REQUEST_TIMEOUT_ERROR
    assert failed.error_type == "request_timeout"
    assert failed.attempts == 0 and failed.finished_at == clock.t
    assert store.logs(late.id)[-1].message == REQUEST_TIMEOUT_ERROR
    assert store.logs(late.id)[-1].level == "ERROR"
    (delivery,) = store.webhook_deliveries(late.id)
    assert json.loads(body_of(store, delivery))["status"] == "ERROR"


def test_expire_deadlines_directly(store, clock):
    late = submit(store, start_deadline=clock.t + 1)
    clock.advance(1)
    assert store.expire_deadlines() == []  # the deadline itself is still in time
    clock.advance(0.5)
    assert store.expire_deadlines() == [late.id]
    assert store.expire_deadlines() == []


def test_a_started_job_is_not_failed_by_its_start_deadline(store, clock):
    job = submit(store, start_deadline=clock.t + 10, max_attempts=3)
    store.claim("w", 5)
    clock.advance(30)  # worker died, deadline passed meanwhile
    assert store.requeue_expired_leases() == [job.id]
    assert store.expire_deadlines() == []
    assert store.claim("w2", 5).id == job.id


# --- leases -----------------------------------------------------------------------------------------------------


def test_renew_lease(store, clock):
    job = submit(store)
    store.claim("w1", 30)
    clock.advance(20)
    assert store.renew_lease(job.id, "w1", 30) == LeaseState(held=True, cancel_requested=False)
    assert store.get(job.id).lease_expires_at == clock.t + 30
    assert store.renew_lease(job.id, "intruder", 30).held is False
    assert store.renew_lease("no-such-id", "w1", 30) == LeaseState(held=False, cancel_requested=False)
    store.complete(job.id, "w1", stored_output(), 1.0)
    assert store.renew_lease(job.id, "w1", 30).held is False


def test_expired_lease_requeues_then_gives_up(store, clock):
    job = submit(store, max_attempts=2)
    assert store.claim("w1", 10).attempts == 1
    clock.advance(5)
    assert store.requeue_expired_leases() == []  # still leased
    clock.advance(6)
    assert store.requeue_expired_leases() == [job.id]
    back = store.get(job.id)
    assert back.status == JobStatus.QUEUED and back.lease_owner is None
    assert store.logs(job.id)[-1].message == "Worker lost; retrying (attempt 2 of 2)"
    assert store.queue_position(back) == 0

    # The lost worker wakes up: it no longer holds the lease and cannot finish the job.
    assert store.complete(job.id, "w1", stored_output(), 1.0) is False
    assert store.fail(job.id, "w1", "boom", "runner_server_error") is False

    again = store.claim("w2", 10)
    assert again.id == job.id and again.attempts == 2 and again.lease_owner == "w2"
    clock.advance(11)
    assert store.requeue_expired_leases() == [job.id]
    final = store.get(job.id)
    assert final.status == JobStatus.COMPLETED
    assert final.error == "The request failed 2 times (the worker stopped while running it)"
    assert final.error_type == "runner_server_error"
    assert store.claim("w3", 10) is None


def test_claim_itself_recovers_expired_leases(store, clock):
    job = submit(store)
    store.claim("dead-worker", 10)
    clock.advance(11)
    again = store.claim("new-worker", 10)
    assert again.id == job.id and again.attempts == 2


def test_has_work_sees_queued_jobs_and_expired_leases_only(store, clock):
    assert not store.has_work()
    job = submit(store)
    assert store.has_work()
    store.claim("w1", 10)
    assert not store.has_work(), "a running job with a live lease is nobody else's work"
    clock.advance(11)
    assert store.has_work(), "an expired lease is work: claim() requeues it"
    assert store.claim("w2", 10).id == job.id
    store.complete(job.id, "w2", stored_output())
    assert not store.has_work()


def test_expired_lease_of_a_cancelled_job_completes_it_as_cancelled(store, clock):
    job = submit(store, max_attempts=3)
    store.claim("w1", 10)
    assert store.request_cancel(job.id, "alice") == CancelOutcome.REQUESTED
    clock.advance(11)
    assert store.requeue_expired_leases() == [job.id]
    final = store.get(job.id)
    assert final.status == JobStatus.COMPLETED and final.error_type == "client_cancelled"


# --- completion -------------------------------------------------------------------------------------------------


def test_complete_and_fail_require_the_lease(store, clock):
    ok = submit(store)
    bad = submit(store)
    store.claim("w", 30)
    store.claim("w", 30)
    clock.advance(3)
    assert store.complete(ok.id, "other", stored_output(), 1.0) is False
    assert store.complete(ok.id, "w", stored_output(seed=7), 2.5) is True
    assert store.complete(ok.id, "w", stored_output(), 1.0) is False  # only once
    done = store.get(ok.id)
    assert done.status == JobStatus.COMPLETED and done.succeeded
    assert done.result == stored_output(seed=7)
    assert done.inference_time == 2.5 and done.finished_at == clock.t
    assert done.lease_owner is None and done.lease_expires_at is None

    assert store.fail(bad.id, "w", "out of memory", "runner_server_error") is True
    failed = store.get(bad.id)
    assert failed.status == JobStatus.COMPLETED and not failed.succeeded
    assert (failed.error, failed.error_type) == ("out of memory", "runner_server_error")
    assert failed.result is None


def test_complete_writes_its_last_log_line_only_when_it_completes(store, clock):
    job = submit(store)
    store.claim("w", 30)
    assert store.complete(job.id, "other", stored_output(), 1.0, last_log="Completed") is False
    assert [line.message for line in store.logs(job.id)][-1] != "Completed"
    assert store.complete(job.id, "w", stored_output(), 1.0, last_log="Completed") is True
    last = store.logs(job.id)[-1]
    assert (last.message, last.level, last.ts) == ("Completed", "INFO", store.get(job.id).finished_at)


def test_completion_enqueues_a_webhook_only_when_asked(store, clock):
    with_hook = submit(store, webhook_url="https://example.com/hook")
    without = submit(store)
    store.claim("w", 30)
    store.claim("w", 30)
    store.complete(with_hook.id, "w", stored_output("t/u.png"), 1.0)
    store.complete(without.id, "w", stored_output(), 1.0)
    assert store.webhook_deliveries(without.id) == []
    (delivery,) = store.webhook_deliveries(with_hook.id)
    assert delivery.url == "https://example.com/hook" and delivery.owner == "alice"
    assert delivery.attempts == 0 and delivery.next_attempt_at == clock.t and not delivery.given_up
    body = json.loads(body_of(store, delivery))
    assert body == {
        "request_id": with_hook.id,
        "gateway_request_id": with_hook.id,
        "status": "OK",
        "payload": {"images": [{"url": "/files/t/u.png", "content_type": "image/png", "file_name": "out-0.png",
                                "file_size": 3, "width": 8, "height": 8}],
                    "seed": 1, "prompt": "a photo of a person img", "timings": {}, "demo_model": False},
        "error": None,
    }


def test_failure_webhook_body(store):
    failing = submit(store, webhook_url="https://example.com/a")
    store.claim("w", 30)
    store.fail(failing.id, "w", "bad photo", "bad_request")
    body = json.loads(body_of(store, store.webhook_deliveries(failing.id)[0]))
    assert body["status"] == "ERROR" and body["error"] == "bad photo"
    assert body["payload"] == {"detail": "bad photo", "error_type": "bad_request"}


# --- cancellation -----------------------------------------------------------------------------------------------


def test_cancel_in_every_state(store):
    running = submit(store)
    done = submit(store)
    assert store.claim("w", 30).id == running.id
    assert store.claim("w", 30).id == done.id
    store.complete(done.id, "w", stored_output(), 1.0)
    queued = submit(store, webhook_url="https://example.com/h")

    assert store.request_cancel("no-such-id", "alice") == CancelOutcome.NOT_FOUND
    assert store.request_cancel(queued.id, "bob") == CancelOutcome.NOT_FOUND  # not bob's
    assert store.get(queued.id).status == JobStatus.QUEUED

    assert store.request_cancel(queued.id, "alice") == CancelOutcome.REMOVED
    removed = store.get(queued.id)
    assert removed.status == JobStatus.COMPLETED
    assert (removed.error, removed.error_type) == (CANCELLED_ERROR, "client_cancelled")
    assert store.queue_position(removed) == 0
    assert store.claim("w", 30) is None  # it left the queue
    assert json.loads(body_of(store, store.webhook_deliveries(queued.id)[0]))["status"] == "ERROR"
    assert store.request_cancel(queued.id, "alice") == CancelOutcome.ALREADY_COMPLETED

    assert store.request_cancel(running.id, "alice") == CancelOutcome.REQUESTED
    assert store.get(running.id).cancel_requested is True
    assert store.get(running.id).status == JobStatus.RUNNING
    assert store.renew_lease(running.id, "w", 30) == LeaseState(held=True, cancel_requested=True)
    assert store.request_cancel(running.id, "alice") == CancelOutcome.REQUESTED  # idempotent
    assert store.fail(running.id, "w", CANCELLED_ERROR, "client_cancelled")
    assert store.request_cancel(running.id, "alice") == CancelOutcome.ALREADY_COMPLETED

    assert store.request_cancel(done.id, "alice") == CancelOutcome.ALREADY_COMPLETED
    assert store.request_cancel(done.id, None) == CancelOutcome.ALREADY_COMPLETED  # operator: any owner
    assert [line.message for line in store.logs(running.id)].count("Cancellation requested") == 1


# --- logs -------------------------------------------------------------------------------------------------------


def test_logs_append_order_and_after_id(store, clock):
    job = submit(store)
    clock.advance(1.25)
    a = store.append_log(job.id, "Loading model")
    b = store.append_log(job.id, "careful", level="warning")
    c = store.append_log(job.id, "step 1/4", level="stdout")
    d = store.append_log(job.id, "odd", level="nonsense")
    assert [x.level for x in (a, b, c, d)] == ["INFO", "WARN", "STDOUT", "INFO"]
    all_lines = store.logs(job.id)
    assert [x.message for x in all_lines] == ["Request queued", "Loading model", "careful", "step 1/4", "odd"]
    assert [x.id for x in all_lines] == sorted(x.id for x in all_lines)
    assert store.logs(job.id, after_id=b.id) == [c, d]
    assert store.logs(job.id, after_id=d.id) == []

    entry = a.to_fal()
    assert entry["message"] == "Loading model" and entry["level"] == "INFO" and entry["source"] == "USER"
    parsed = datetime.fromisoformat(entry["timestamp"])
    assert parsed.utcoffset().total_seconds() == 0
    assert parsed.timestamp() == pytest.approx(clock.t)


def test_logs_are_per_job_and_bounded(store):
    one, two = submit(store), submit(store)
    store.append_log(one.id, "x" * 20_000)
    assert all(line.message == "Request queued" for line in store.logs(two.id))
    assert len(store.logs(one.id)[-1].message) <= 8000
    with pytest.raises(KeyError):
        store.append_log("no-such-id", "hello")


# --- cleanup / metrics ------------------------------------------------------------------------------------------


def test_cleanup_removes_old_completed_jobs_with_their_rows(store, clock):
    old = submit(store, webhook_url="https://example.com/h")
    store.claim("w", 30)
    store.complete(old.id, "w", stored_output("t/x.png"), 1.0)
    clock.advance(100)
    recent = submit(store)
    store.claim("w", 30)
    store.complete(recent.id, "w", stored_output(), 1.0)
    still_queued = submit(store)
    clock.advance(100)  # old finished 200 s ago, recent 100 s ago

    removed = store.cleanup(older_than_seconds=150)
    assert [j.id for j in removed] == [old.id]
    assert removed[0].input is None  # not loaded: the caller only needs the outputs
    assert removed[0].result == stored_output("t/x.png")  # the caller deletes these files
    assert store.get(old.id) is None
    assert store.logs(old.id) == [] and store.webhook_deliveries(old.id) == []
    assert store.get(recent.id) is not None and store.get(still_queued.id) is not None
    assert store.cleanup(older_than_seconds=150) == []
    clock.advance(10_000)
    assert {j.id for j in store.cleanup(older_than_seconds=150)} == {recent.id}
    assert store.get(still_queued.id).status == JobStatus.QUEUED


def test_counts_and_outcomes(store):
    assert store.counts() == {"queued": 0, "running": 0, "completed": 0}
    assert store.outcomes() == {"ok": 0, "error": 0, "cancelled": 0}
    jobs = [submit(store) for _ in range(5)]
    for _ in range(3):
        store.claim("w", 30)
    store.complete(jobs[0].id, "w", stored_output(), 1.0)
    store.fail(jobs[1].id, "w", "boom", "runner_server_error")
    store.request_cancel(jobs[4].id, "alice")
    assert store.counts() == {"queued": 1, "running": 1, "completed": 3}
    assert store.outcomes() == {"ok": 1, "error": 1, "cancelled": 1}


# --- webhook outbox ---------------------------------------------------------------------------------------------


def _finished_with_hook(store, url="https://example.com/h"):
    job = submit(store, webhook_url=url)
    store.claim("w", 30)
    store.complete(job.id, "w", stored_output(), 1.0)
    return job


def test_due_webhooks_lease_and_marking(store, clock):
    job = _finished_with_hook(store)
    now = clock.t
    (d,) = store.due_webhooks(now, limit=10, lease_seconds=60)
    assert d.job_id == job.id and d.attempts == 0
    assert store.due_webhooks(now + 59) == []  # taken: a second dispatcher does not see it
    (again,) = store.due_webhooks(now + 61, lease_seconds=60)  # taker died: it comes back
    assert again.id == d.id

    store.mark_webhook(d.id, ok=False, error="HTTP 500", next_attempt_at=now + 500)
    (row,) = store.webhook_deliveries(job.id)
    assert (row.attempts, row.last_error, row.next_attempt_at) == (1, "HTTP 500", now + 500)
    assert store.due_webhooks(now + 499) == []
    assert [x.id for x in store.due_webhooks(now + 500)] == [d.id]

    store.mark_webhook(d.id, ok=True)
    (row,) = store.webhook_deliveries(job.id)
    assert row.delivered_at == clock.t and row.attempts == 2 and row.last_error is None
    assert store.due_webhooks(now + 10**6) == []


def test_given_up_webhooks_are_never_due_again(store, clock):
    job = _finished_with_hook(store)
    (d,) = store.due_webhooks(clock.t)
    store.mark_webhook(d.id, ok=False, error="timeout")
    (row,) = store.webhook_deliveries(job.id)
    assert row.given_up and row.last_error == "timeout" and row.delivered_at is None
    assert store.due_webhooks(clock.t + 10**6) == []


def test_due_webhooks_respects_limit_and_order(store, clock):
    jobs = []
    for _ in range(4):
        jobs.append(_finished_with_hook(store))
        clock.advance(1)
    due = store.due_webhooks(clock.t, limit=3)
    assert [d.job_id for d in due] == [j.id for j in jobs[:3]]
    assert [d.job_id for d in store.due_webhooks(clock.t, limit=3)] == [jobs[3].id]


# --- durability & SQLite specifics ------------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(db_path, clock):
    store = SQLJobStore(db_path, clock=clock)
    queued = submit(store, priority="high", start_deadline=clock.t + 999, webhook_url="https://e.com/h")
    running = submit(store)
    assert store.claim("w", 30).id == queued.id
    store.complete(queued.id, "w", stored_output("t/1.png"), 3.0)
    assert store.claim("w", 30).id == running.id
    store.append_log(running.id, "step 2/4")
    waiting = submit(store, priority="low")
    store.close()

    reopened = SQLJobStore(str(db_path), clock=clock)
    try:
        done = reopened.get(queued.id)
        assert done.status == JobStatus.COMPLETED and done.result == stored_output("t/1.png")
        assert done.start_deadline == clock.t + 999 and done.inference_time == 3.0
        assert reopened.get(running.id).lease_owner == "w"
        assert reopened.logs(running.id)[-1].message == "step 2/4"
        assert reopened.queue_position(reopened.get(waiting.id)) == 0
        assert len(reopened.webhook_deliveries(queued.id)) == 1
        assert reopened.renew_lease(running.id, "w", 30).held
        assert reopened.complete(running.id, "w", stored_output(), 1.0)
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_is_in_wal_mode(store, db_path):
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_write_transactions_take_the_lock_up_front(store, db_path):
    """BEGIN IMMEDIATE: while the store is inside a write transaction, nobody else can start one."""
    raw = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        with store._write() as conn:
            conn.exec_driver_sql("SELECT 1")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                raw.execute("BEGIN IMMEDIATE")
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("ROLLBACK")
    finally:
        raw.close()


def test_memory_store_and_urls(tmp_path, clock):
    with SQLJobStore(":memory:", clock=clock) as mem:
        job = submit(mem)
        assert mem.claim("w", 1).id == job.id
    with SQLJobStore(f"sqlite:///{tmp_path / 'x.db'}", clock=clock) as by_url:
        assert by_url.get(submit(by_url).id) is not None
    with pytest.raises(ValueError):
        SQLJobStore("mysql://user@localhost/db")


def test_creates_missing_parent_directories(tmp_path):
    with SQLJobStore(tmp_path / "a" / "b" / "jobs.db") as s:
        assert s.get(submit(s).id) is not None


# --- concurrency ------------------------------------------------------------------------------------------------


def _claim_all(store: SQLJobStore, worker: str, out: list[str], start: threading.Barrier) -> None:
    start.wait()
    while (job := store.claim(worker, 60)) is not None:
        out.append(job.id)
        store.append_log(job.id, f"claimed by {worker}")


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_claims_in_threads_never_share_a_job(db_path, shared):
    owner = SQLJobStore(db_path)
    ids = {submit(owner).id for _ in range(60)}
    n = 6
    stores = [owner] * n if shared else [SQLJobStore(db_path) for _ in range(n)]
    results: list[list[str]] = [[] for _ in range(n)]
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=_claim_all, args=(stores[i], f"w{i}", results[i], barrier)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [job_id for r in results for job_id in r]
    assert len(claimed) == len(set(claimed)) == 60
    assert set(claimed) == ids
    assert all(owner.get(i).attempts == 1 for i in ids)
    for s in set(stores):
        s.close()


def _claim_in_process(db: str, worker: str, start, queue) -> None:
    """Child process body (spawned): claim until the queue is empty, report the ids."""
    store = SQLJobStore(db)
    start.wait()
    got = []
    while (job := store.claim(worker, 60)) is not None:
        got.append(job.id)
        time.sleep(0.002)  # "work" outside the transaction, as a real worker does
    store.close()
    queue.put((worker, got))


def test_concurrent_claims_in_two_processes_never_share_a_job(db_path):
    store = SQLJobStore(db_path)
    ids = {submit(store).id for _ in range(200)}
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)  # both children claim at the same moment
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(str(db_path), f"p{i}", start, queue)) for i in range(2)]
    for p in procs:
        p.start()
    reports = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    claimed = reports["p0"] + reports["p1"]
    assert len(claimed) == len(set(claimed)) == 200
    assert reports["p0"] and reports["p1"]  # they really did compete
    assert set(claimed) == ids
    assert all(store.get(i).status == JobStatus.RUNNING for i in ids)
    store.close()


def test_concurrent_submits_keep_a_strict_order(db_path):
    store = SQLJobStore(db_path)
    barrier = threading.Barrier(4)

    def submit_many() -> None:
        barrier.wait()
        for _ in range(15):
            submit(store)

    threads = [threading.Thread(target=submit_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    positions = sorted(store.queue_position(store.get(j)) for j in _all_ids(db_path))
    assert positions == list(range(60))  # no ties: every job has its own place
    store.close()


def _all_ids(db_path: Path | str) -> list[str]:
    with SQLJobStore(db_path) as store, store._read() as conn:
        return list(conn.execute(sa.select(jobs_table.c.id)).scalars())


# --- the job path's shortcuts -------------------------------------------------------------------------------------


def test_submit_reports_the_queue_position_counted_in_its_transaction(store, clock):
    first = submit(store)
    assert first.queue_position == 0
    second = submit(store)
    assert second.queue_position == 1
    urgent = submit(store, priority="high")
    assert urgent.queue_position == 0  # ahead of both
    clock.advance(1)
    late = submit(store, start_deadline=clock.t + 1)
    assert late.queue_position == 3
    clock.advance(2)  # its deadline passes: it no longer counts for anyone
    assert submit(store).queue_position == 3
    # Records read later carry no position of their own; queue_position() tells the position now.
    assert store.get(second.id).queue_position is None
    assert store.queue_position(store.get(second.id)) == 2


def test_claim_does_housekeeping_at_most_once_a_second_and_never_takes_a_job_past_its_deadline(store, clock):
    from photomaker_server.jobs.sql.store import CLAIM_HOUSEKEEPING_S

    clock.advance(30)  # reachable for a lease period since the store opened: claims judge leases from now on
    assert store.claim("w", 30) is None  # housekeeping ran (nothing to do)
    late = submit(store, start_deadline=clock.t + 0.2)
    leased = submit(store)
    clock.advance(0.5)  # the deadline passed; the next housekeeping round is not due yet
    claimed = store.claim("w", 0.1)
    assert claimed.id == leased.id  # the late job was skipped, not run
    assert store.get(late.id).status == JobStatus.QUEUED
    clock.advance(0.3)  # the lease expired too
    assert store.claim("w2", 30) is None  # not requeued yet, and the late job is still not taken
    clock.advance(CLAIM_HOUSEKEEPING_S)
    again = store.claim("w2", 30)  # housekeeping: the late job fails, the lost one is back and taken
    assert again.id == leased.id and again.attempts == 2
    failed = store.get(late.id)
    assert failed.status == JobStatus.COMPLETED and failed.error_type == "request_timeout"
