"""The store operations added for scale-out, on SQLite and PostgreSQL: the worker registry, shared secrets,
handing a job back on shutdown, and change notifications (publish)."""

from __future__ import annotations

import secrets
import threading

import pytest
import sqlalchemy as sa

from helpers import stored_request, stored_output
from photomaker_server.jobs.factory import open_job_store
from photomaker_server.jobs.records import (
    CANCELLED_ERROR,
    RELEASED_MESSAGE,
    JobStatus,
    WorkerInfo,
    topics_to_announce,
)
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.jobs.wakeups import CHANNEL, PostgresWakeups

APP = "fal-ai/photomaker"


def info(worker_id: str = "host-a-1-abc", **kwargs) -> WorkerInfo:
    values = dict(host="host-a", pid=1, device="cuda:0 (float16)", state="ready", detail="model loaded",
                  loaded_bases=["photomaker"], started_at=1_699_999_000.0,
                  stats={"steps_total": 3, "inference_buckets": [0, 1, 2]})
    values.update(kwargs)
    return WorkerInfo(id=worker_id, **values)


# --- worker registry --------------------------------------------------------------------------------------------


def test_heartbeat_upserts_and_stamps_the_stores_clock(store, clock):
    store.heartbeat(info(heartbeat_at=1.0))
    (row,) = store.workers()
    assert row == info(heartbeat_at=clock.t)
    clock.advance(5)
    store.heartbeat(info(state="busy", current_job="job-1", loaded_bases=["photomaker", "photomaker-style"],
                         stats={"steps_total": 10}))
    (row,) = store.workers()
    assert (row.state, row.current_job, row.heartbeat_at) == ("busy", "job-1", clock.t)
    assert row.loaded_bases == ["photomaker", "photomaker-style"] and row.stats == {"steps_total": 10}


def test_workers_lists_live_ones_and_remove_forgets(store, clock):
    store.heartbeat(info("w-old"))
    clock.advance(10)
    store.heartbeat(info("w-new", demo_model=True))
    assert [w.id for w in store.workers(max_age_s=15)] == ["w-new", "w-old"]
    clock.advance(6)  # w-old is now 16 s silent
    assert [w.id for w in store.workers(max_age_s=15)] == ["w-new"]
    assert [w.id for w in store.workers(max_age_s=None)] == ["w-new", "w-old"]
    assert store.workers()[0].demo_model is True
    store.remove_worker("w-new")
    store.remove_worker("no-such-worker")
    assert [w.id for w in store.workers(None)] == ["w-old"]


def test_cleanup_prunes_workers_silent_for_a_day(store, clock):
    store.heartbeat(info("crashed"))
    clock.advance(86_000)
    store.heartbeat(info("alive"))
    store.cleanup(older_than_seconds=3600)
    assert {w.id for w in store.workers(None)} == {"crashed", "alive"}
    clock.advance(401)
    store.cleanup(older_than_seconds=3600)
    assert [w.id for w in store.workers(None)] == ["alive"]


# --- shared secrets ---------------------------------------------------------------------------------------------


def test_shared_secret_is_created_once_and_kept(store):
    calls: list[int] = []

    def create() -> bytes:
        calls.append(1)
        return secrets.token_bytes(32)

    first = store.shared_secret("token-secret", create)
    assert len(first) == 32
    assert store.shared_secret("token-secret", create) == first
    assert calls == [1]
    assert store.shared_secret("other", lambda: b"x") == b"x"
    with pytest.raises(ValueError):
        store.shared_secret("empty", lambda: b"")


def test_racing_processes_agree_on_one_secret(db_path):
    """Stores of their own (as separate processes would have) create a secret at the same moment."""
    n = 6
    stores = [SQLJobStore(db_path) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[bytes] = []

    def race(s: SQLJobStore) -> None:
        def create() -> bytes:
            barrier.wait()  # everyone has seen "absent" before anyone inserts
            return secrets.token_bytes(16)

        results.append(s.shared_secret("signing-key", create))

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == n and len(set(results)) == 1
    for s in stores:
        s.close()


# --- release ----------------------------------------------------------------------------------------------------


def test_release_requeues_without_counting_the_attempt(store, clock):
    job = store.submit("alice", APP, stored_request(), start_deadline=clock.t + 5, max_attempts=1)
    assert store.claim("w1", 30).attempts == 1
    assert store.release(job.id, "intruder") is False
    clock.advance(10)  # past the start deadline: it did start, so the deadline no longer applies
    assert store.release(job.id, "w1") is True
    back = store.get(job.id)
    assert back.status == JobStatus.QUEUED and back.attempts == 0
    assert back.lease_owner is None and back.lease_expires_at is None
    assert store.logs(job.id)[-1].message == RELEASED_MESSAGE
    assert store.release(job.id, "w1") is False  # no longer holds it
    assert store.expire_deadlines() == []
    again = store.claim("w2", 30)
    assert again.id == job.id and again.attempts == 1  # max_attempts=1 and it still runs
    assert store.complete(job.id, "w2", stored_output())


def test_release_of_a_cancelled_job_completes_it_as_cancelled(store):
    job = store.submit("alice", APP, stored_request())
    store.claim("w1", 30)
    store.request_cancel(job.id, "alice")
    assert store.release(job.id, "w1") is True
    final = store.get(job.id)
    assert final.status == JobStatus.COMPLETED and final.error == CANCELLED_ERROR
    assert store.claim("w2", 30) is None


# --- publish ----------------------------------------------------------------------------------------------------


def test_publish_topics_after_each_change(db_path, clock):
    topics: list[str] = []
    store = open_job_store(db_path, clock=clock, publish=topics.append)
    try:
        job = store.submit("alice", APP, stored_request())
        assert topics == ["work"]  # nobody can follow the job before its id is returned
        topics.clear()
        store.get(job.id), store.logs(job.id), store.has_work(), store.counts()
        assert topics == []  # reads publish nothing
        store.claim("w1", 10)
        assert topics == [f"job:{job.id}"]
        topics.clear()
        store.append_log(job.id, "step 1")
        assert topics == [f"logs:{job.id}"]  # log lines do not wake those following only the status
        topics.clear()
        store.append_logs(job.id, [("step 2", "INFO"), ("step 3", "INFO")])
        assert topics == [f"logs:{job.id}"]  # one announcement per batch
        topics.clear()
        store.request_cancel(job.id, "alice")
        assert topics == [f"job:{job.id}"]  # the status topic wakes log followers too
        topics.clear()
        store.renew_lease(job.id, "w1", 10)
        assert topics == []
        clock.advance(11)
        store.requeue_expired_leases()  # cancelled while its worker died: completed, not claimable
        assert topics == [f"job:{job.id}"]

        topics.clear()
        second = store.submit("alice", APP, stored_request())
        store.claim("w1", 10)
        topics.clear()
        store.release(second.id, "w1")
        assert set(topics) == {"work", f"job:{second.id}"}
        topics.clear()
        store.claim("w1", 10)
        clock.advance(11)
        topics.clear()
        store.requeue_expired_leases()
        assert set(topics) == {"work", f"job:{second.id}"}
        topics.clear()
        store.claim("w1", 10)
        topics.clear()
        store.complete(second.id, "w1", stored_output())
        assert topics == [f"job:{second.id}"]
        third = store.submit("alice", APP, stored_request())
        store.claim("w1", 10)
        topics.clear()
        store.complete(third.id, "w1", stored_output(), last_log="Completed", logs=[("Saving", "INFO")])
        assert topics == [f"job:{third.id}"]
    finally:
        store.close()


def test_publish_happens_after_commit_and_its_errors_are_swallowed(db_path):
    seen: list[str] = []
    holder: dict[str, SQLJobStore] = {}

    def publish(topic: str) -> None:
        if topic == "work":
            # Another connection already sees the new job: the transaction committed before publishing.
            seen.append(str(holder["other"].counts()["queued"]))
        raise RuntimeError("the bus is down")

    holder["other"] = SQLJobStore(db_path)
    store = SQLJobStore(db_path, publish=publish)
    try:
        job = store.submit("alice", APP, stored_request())  # does not raise
        assert seen == ["1"]
        assert store.get(job.id) is not None
    finally:
        store.close()
        holder["other"].close()


def test_a_rolled_back_transaction_publishes_nothing(db_path):
    topics: list[str] = []
    store = SQLJobStore(db_path, publish=topics.append)
    try:
        with pytest.raises(KeyError):
            store.append_log("no-such-job", "hello")
        assert topics == []
    finally:
        store.close()


def test_topics_to_announce_fold_a_jobs_log_topic_into_its_status_topic():
    assert topics_to_announce(["logs:a", "job:a", "logs:a", "work", "logs:b"]) == ["job:a", "work", "logs:b"]
    assert topics_to_announce([]) == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_notify_channel_needs_postgresql(db_path):
    with pytest.raises(ValueError, match="PostgreSQL"):
        SQLJobStore(db_path, notify_channel=CHANNEL)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_store_notifies_inside_its_transactions(db_path):
    """With ``notify_channel`` the topics ride on the transaction: delivered once it commits (to listeners in any
    process), never for a rollback, and no ``publish`` callback is involved."""
    wakeups = PostgresWakeups(str(db_path))
    store = SQLJobStore(db_path, notify_channel=wakeups.channel)
    try:
        work = wakeups.subscribe("work")
        job = store.submit("alice", APP, stored_request())
        assert work.wait(10)
        status, logs = wakeups.subscribe(f"job:{job.id}"), wakeups.subscribe(f"logs:{job.id}")
        store.append_log(job.id, "hello")
        assert logs.wait(10) and not status.wait(0.2)
        store.claim("w1", 30)
        assert status.wait(10)
        with pytest.raises(RuntimeError):
            with store._write() as conn:  # a transaction that announces, then rolls back
                store._notify(f"job:{job.id}")
                conn.execute(sa.text("SELECT 1"))
                raise RuntimeError("rolled back")
        assert status.wait(0.5) is False
        assert store.complete(job.id, "w1", stored_output(), last_log="Completed")
        assert status.wait(10)
    finally:
        store.close()
        wakeups.close()
