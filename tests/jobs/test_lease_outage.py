"""Leases mean "the worker is gone", not "the database was": no lease is judged until the database has been reachable
for a lease period, a worker that lost its lease is fenced, and lost workers and leases are counted.

The outage is simulated on the store's own view of the database (``store.health``, the same calls a failing
connection makes) with a fake clock, on both databases; test_store_unavailable.py stops a real PostgreSQL.
"""

from __future__ import annotations

import logging
import time

import pytest

from helpers import stored_request, stored_output
from photomaker_server.jobs.records import JobStatus, LeaseLost, WorkerInfo
from photomaker_server.jobs.sql import SQLJobStore

APP = "fal-ai/photomaker"
LEASE = 30.0


def outage(store, clock, seconds: float) -> None:
    """The database is unreachable for ``seconds`` (as every call of this process would find it)."""
    store.health.failed("connection refused")
    clock.advance(seconds)
    store.health.succeeded()


def test_a_lease_that_ran_out_during_an_outage_is_kept_until_its_worker_could_renew(store, clock, caplog):
    clock.advance(LEASE)  # the store has been reachable for a lease period: leases are judged
    job = store.submit("alice", APP, stored_request())
    assert store.claim("w-live", LEASE).id == job.id
    clock.advance(10)  # the last renewal
    assert store.renew_lease(job.id, "w-live", LEASE).held
    clock.advance(5)
    outage(store, clock, 28)  # 28 s down, with 30 s leases: the lease ran out 3 s before the database came back
    assert store.get(job.id).lease_expires_at < clock.t

    with caplog.at_level(logging.WARNING):
        assert store.requeue_expired_leases(grace_s=LEASE) == []
        assert store.claim("w-other", LEASE) is None  # the claim's housekeeping keeps it too
    said = [r.getMessage() for r in caplog.records if "keep their leases until" in r.getMessage()]
    assert len(said) == 1 and "unreachable for 28 s" in said[0] and job.id in said[0], said

    clock.advance(1)
    assert store.renew_lease(job.id, "w-live", LEASE).held  # the live worker renews at once on reconnect
    for _ in range(3):  # past the grace its lease is judged like any other, and holds while it is renewed
        clock.advance(LEASE / 3)
        assert store.requeue_expired_leases(grace_s=LEASE) == []
        assert store.renew_lease(job.id, "w-live", LEASE).held
    assert store.complete(job.id, "w-live", stored_output())
    final = store.get(job.id)
    assert final.status == JobStatus.COMPLETED and final.attempts == 1
    assert store.ops_counts() == {}


def test_a_worker_that_died_during_the_outage_loses_its_job_a_lease_period_after_it(store, clock):
    clock.advance(LEASE)
    job = store.submit("alice", APP, stored_request(), max_attempts=3)
    store.claim("w-dead", LEASE)
    clock.advance(5)
    outage(store, clock, 40)
    assert store.requeue_expired_leases(grace_s=LEASE) == []
    clock.advance(LEASE - 1)
    assert store.requeue_expired_leases(grace_s=LEASE) == []  # reachable for 29 s only
    clock.advance(1)
    assert store.requeue_expired_leases(grace_s=LEASE) == [job.id]  # no renewal in a full lease period: gone
    again = store.get(job.id)
    assert again.status == JobStatus.QUEUED and again.lease_owner is None
    assert store.logs(job.id)[-1].message == "Worker lost; retrying (attempt 2 of 3)"
    assert store.ops_counts() == {"lease_expiries": 1, "jobs_rerun": 1}
    # The dead worker's late writes are refused (fencing): no result, no log lines in the next run's log.
    assert store.complete(job.id, "w-dead", stored_output()) is False
    with pytest.raises(LeaseLost):
        store.append_logs(job.id, [("Step 9/10", "INFO")], held_by="w-dead")
    assert store.claim("w-new", LEASE).attempts == 2
    assert store.append_logs(job.id, [("Step 1/10", "INFO")], held_by="w-new")[0].message == "Step 1/10"


def test_a_freshly_started_reclaimer_waits_a_lease_period_before_judging(db_path, clock):
    with SQLJobStore(db_path, clock=clock) as first:
        job = first.submit("alice", APP, stored_request())
        first.claim("w", LEASE)
    clock.advance(2 * LEASE)  # long expired; but a reclaimer that has just started cannot tell who renews
    with SQLJobStore(db_path, clock=clock) as reclaimer:
        assert reclaimer.requeue_expired_leases(grace_s=LEASE) == []
        clock.advance(LEASE)
        assert reclaimer.requeue_expired_leases(grace_s=LEASE) == [job.id]


def test_lost_workers_are_removed_from_the_registry_and_counted(store, clock, caplog):
    store.heartbeat(WorkerInfo(id="w-killed", host="h", pid=1, state="ready", current_job="job-1"))
    clock.advance(10)
    store.heartbeat(WorkerInfo(id="w-alive", host="h", pid=2, state="ready"))
    clock.advance(10)  # w-killed silent for 20 s, w-alive for 10 s
    assert store.forget_lost_workers(stale_after_s=15, grace_s=LEASE) == []  # reachable for 20 s only
    clock.advance(LEASE)
    store.heartbeat(WorkerInfo(id="w-alive", host="h", pid=2, state="ready"))
    with caplog.at_level(logging.WARNING):
        lost = store.forget_lost_workers(stale_after_s=15, grace_s=LEASE)
    assert [w.id for w in lost] == ["w-killed"]
    assert "worker w-killed (host h, pid 1) stopped heartbeating 50 s ago (last state ready, running job-1)" in \
        caplog.text
    assert [w.id for w in store.workers(max_age_s=None)] == ["w-alive"]
    assert store.ops_counts() == {"workers_lost": 1}
    outage(store, clock, 20)  # nobody could heartbeat: nobody is lost for it
    assert store.forget_lost_workers(stale_after_s=15, grace_s=LEASE) == []
    assert store.ops_counts() == {"workers_lost": 1}


def test_health_says_an_outage_once_and_its_end_with_the_count(store, clock, caplog):
    reconnected = []
    store.health.on_reconnect(lambda: reconnected.append(clock.t))
    with caplog.at_level(logging.WARNING, logger="photomaker_server.jobs.database"):
        for _ in range(50):
            store.health.failed("connection refused")
            clock.advance(0.5)
        assert store.health.down_for() == 25 and store.health.reachable_for() == 0
        store.get("nothing")  # a call that works ends it
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable (connection refused)" in lines[0]
    assert "reachable again after 25.0 s (50 failed calls meanwhile)" in lines[1]
    assert store.health.reconnects == 1 and reconnected == [clock.t]


def test_lease_times_are_on_the_database_clock_whatever_a_host_s_own_clock_says(pg_server):
    """A worker host whose clock runs 40 s behind writes leases that a reclaimer elsewhere reads correctly."""
    url = pg_server.create_database()
    try:
        with SQLJobStore(url, local_clock=lambda: time.time() - 40) as skewed, SQLJobStore(url) as reclaimer:
            assert abs(skewed.now() - time.time()) < 1  # read as the database server's clock
            job = reclaimer.submit("alice", APP, stored_request())
            claimed = skewed.claim("w-behind", LEASE)
            assert abs(claimed.lease_expires_at - (time.time() + LEASE)) < 1
            assert reclaimer.requeue_expired_leases() == []  # 30 s left, not -10
            assert skewed.renew_lease(job.id, "w-behind", LEASE).held
    finally:
        pg_server.drop_database(url)
