"""``JobStore.release``: a worker that is shutting down hands its running job straight back to the queue."""

from __future__ import annotations

from helpers import stored_request, stored_output
from photomaker_server.jobs.protocol import JobStore
from photomaker_server.jobs.records import RELEASED_MESSAGE as RELEASED, JobStatus

APP = "fal-ai/photomaker"


def _submit(store: JobStore, **kwargs):
    return store.submit("alice", APP, stored_request(), **kwargs)


def test_release_requeues_at_once_without_counting_the_attempt(store, clock):
    job = _submit(store, max_attempts=2)
    assert store.claim("w1", lease_seconds=30).id == job.id
    assert store.release(job.id, "w1") is True

    back = store.get(job.id)
    assert back.status == JobStatus.QUEUED
    assert back.attempts == 0 and back.lease_owner is None and back.lease_expires_at is None
    assert store.has_work()  # no waiting for a lease to run out
    assert [line.message for line in store.logs(job.id)][-1] == RELEASED
    assert store.logs(job.id)[-1].level == "WARN"

    # Released as often as you like, it still gets every one of its attempts when workers really die.
    for _ in range(3):
        assert store.claim("w2", lease_seconds=30).attempts == 1
        assert store.release(job.id, "w2")
    again = store.claim("w3", lease_seconds=30)
    assert again.id == job.id and again.attempts == 1 and again.lease_owner == "w3"
    assert store.complete(job.id, "w3", stored_output())
    assert store.get(job.id).succeeded


def test_a_released_job_keeps_its_place_in_the_queue(store, clock):
    first = _submit(store)
    clock.advance(1)
    second = _submit(store)
    assert store.claim("w1", lease_seconds=30).id == first.id
    assert store.release(first.id, "w1")
    assert store.claim("w2", lease_seconds=30).id == first.id  # older than `second`, so it runs first again


def test_release_refuses_a_worker_that_no_longer_holds_the_lease(store, clock):
    job = _submit(store)
    assert store.release(job.id, "w1") is False  # queued, never claimed
    store.claim("w1", lease_seconds=3)
    assert store.release(job.id, "someone-else") is False
    assert store.get(job.id).status == JobStatus.RUNNING

    clock.advance(30)  # w1's lease ran out (and a claim judges leases: reachable for a lease period)
    assert store.claim("w2", lease_seconds=30).id == job.id
    assert store.release(job.id, "w1") is False
    assert store.get(job.id).lease_owner == "w2"

    assert store.complete(job.id, "w2", stored_output())
    assert store.release(job.id, "w2") is False  # finished jobs stay finished
    assert store.get(job.id).status == JobStatus.COMPLETED
    assert RELEASED not in [line.message for line in store.logs(job.id)]
    assert store.release("no-such-job", "w2") is False
