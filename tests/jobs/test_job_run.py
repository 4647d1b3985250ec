"""The worker's per-job log writer (``JobRun``): lines are written in order, in batches, off the denoising loop,
and the lines of a job's last moments go with its completing transaction instead of holding it up."""

from __future__ import annotations

import threading
import time

import pytest

from helpers import stored_request, stored_output
from photomaker_server.jobs.records import StoreUnavailable
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.worker.job_run import JobRun

APP = "fal-ai/photomaker"


class _SlowStore:
    """Wraps a store; ``append_logs`` records each batch and can be held until the test lets it go."""

    def __init__(self, store: SQLJobStore) -> None:
        self.store = store
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()

    def append_logs(self, job_id: str, lines: list[tuple[str, str]], **kwargs):  # noqa: ANN003, ANN201
        self.writing.set()
        self.gate.wait(10)
        self.batches.append([message for message, _ in lines])
        return self.store.append_logs(job_id, lines, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.store, name)


def _messages(store: SQLJobStore, job_id: str) -> list[str]:
    return [line.message for line in store.logs(job_id)]


@pytest.fixture
def claimed(tmp_path):
    """A store and a job worker ``w`` holds."""
    store = SQLJobStore(tmp_path / "jobs.db")
    job = store.submit("alice", APP, stored_request())
    store.claim("w", 30)
    yield store, job
    store.close()


def test_lines_are_written_in_order_and_batched_while_a_write_is_in_flight(claimed):
    store, job = claimed
    slow = _SlowStore(store)
    slow.gate.clear()
    with JobRun(slow, job, "w", 30) as run:  # type: ignore[arg-type]
        run.log("one")
        assert slow.writing.wait(10)  # "one" is being written (held at the gate)
        run.log("two")
        run.log("three", "WARN")
        slow.gate.set()
        run.flush()
        assert _messages(store, job.id) == ["Request queued", "one", "two", "three"]
    assert slow.batches == [["one"], ["two", "three"]]  # the burst behind the write went in one transaction


def test_held_lines_wait_for_the_completing_transaction(claimed):
    store, job = claimed
    with JobRun(store, job, "w", 30) as run:
        run.log("Step 1/1")
        run.flush()
        run.hold_lines()
        run.log("after inference")
        assert "after inference" not in _messages(store, job.id)  # not written on its own
        pending = run.take_pending()
        assert pending == [("after inference", "INFO")]
        assert store.complete(job.id, "w", stored_output(), 1.0, last_log="Completed", logs=pending)
    assert _messages(store, job.id)[-3:] == ["Step 1/1", "after inference", "Completed"]


def test_flush_writes_held_lines_too(claimed):
    """The failure path: the job ends with ``fail``, which takes no lines, so ``flush`` writes the held ones."""
    store, job = claimed
    with JobRun(store, job, "w", 30) as run:
        run.hold_lines()
        run.log("something broke", "ERROR")
        run.flush()
        assert _messages(store, job.id)[-1] == "something broke"
        assert store.fail(job.id, "w", "something broke", "runner_server_error")


class _OutageStore:
    """Wraps a store; every call fails as an unreachable database would while ``down`` is set."""

    def __init__(self, store: SQLJobStore) -> None:
        self.store, self.down, self.renewals = store, threading.Event(), 0

    def __getattr__(self, name: str):  # noqa: ANN204
        attr = getattr(self.store, name)

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self.down.is_set():
                raise StoreUnavailable("the database is unreachable (simulated)")
            if name == "renew_lease":
                self.renewals += 1
            return attr(*args, **kwargs)

        return call if callable(attr) else attr


def test_lines_logged_during_an_outage_are_kept_and_the_lease_renewed_as_soon_as_it_is_back(claimed):
    store, job = claimed
    flaky = _OutageStore(store)
    with JobRun(flaky, job, "w", 30) as run:  # type: ignore[arg-type]
        flaky.down.set()
        run.log("Step 1/2")
        run.log("Step 2/2")
        time.sleep(1.5)  # the writer and the lease thread find the database down (renewal is not due for 10 s)
        assert _messages(store, job.id) == ["Request queued"] and flaky.renewals == 0
        flaky.down.clear()
        deadline = time.monotonic() + 10
        while flaky.renewals == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flaky.renewals == 1  # at once (within a poll), not at the next due renewal 10 s later
        run.flush()
        assert _messages(store, job.id) == ["Request queued", "Step 1/2", "Step 2/2"]  # nothing lost, in order
        assert not run.should_stop()


def test_a_worker_whose_lease_was_taken_stops_and_writes_nothing_more(claimed, caplog):
    store, job = claimed
    with JobRun(store, job, "w", 30) as run:
        run.log("Step 1/3")
        run.flush()
        assert store.release(job.id, "w")  # (as the reclaimer would) the job is no longer w's
        assert store.claim("w2", 30).id == job.id
        deadline = time.monotonic() + 10
        while not run.should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.lease_lost.is_set()  # seen by the cancel poll, within about half a second
        run.log("Step 2/3")
        run.flush()
    assert "Step 2/3" not in _messages(store, job.id)
    assert "no longer holds its lease (it is running on w2 now)" in caplog.text


def test_the_job_s_own_end_is_not_taken_for_a_lost_lease(claimed, caplog):
    store, job = claimed
    with JobRun(store, job, "w", 30) as run:
        run.ending()
        assert store.complete(job.id, "w", stored_output(), last_log="Completed")
        time.sleep(1.2)  # the watch reads the job (completed) at least once before the run closes
        assert not run.lease_lost.is_set()
    assert "no longer holds its lease" not in caplog.text
