"""Several worker processes draining one queue, as GPU workers on several hosts do (on SQLite and PostgreSQL):
every job runs exactly once."""

from __future__ import annotations

import multiprocessing
from collections import Counter

from helpers import stored_request, stored_output
from photomaker_server.jobs.records import JobStatus
from photomaker_server.jobs.sql import SQLJobStore

N_JOBS = 300
N_WORKERS = 4


def _work_in_process(db: str, worker: str, start, queue) -> None:  # noqa: ANN001
    """Child process body (spawned): claim and complete until the queue is empty, then report."""
    store = SQLJobStore(db)
    start.wait()
    claimed, completed = [], []
    while (job := store.claim(worker, 60)) is not None:
        claimed.append(job.id)
        store.append_log(job.id, f"running on {worker}")
        if store.complete(job.id, worker, stored_output(prompt=f"a photo by {worker} img"), 0.01):
            completed.append(job.id)
    store.close()
    queue.put((worker, claimed, completed))


def test_worker_processes_complete_every_job_exactly_once(db_path):
    store = SQLJobStore(db_path)
    ids = {store.submit("alice", "fal-ai/photomaker", stored_request()).id for i in range(N_JOBS)}
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(N_WORKERS)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_work_in_process, args=(str(db_path), f"p{i}", start, queue)) for i in range(N_WORKERS)
    ]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    claimed = Counter(job_id for _, got, _ in reports for job_id in got)
    completed = [job_id for _, _, done in reports for job_id in done]
    assert set(claimed) == ids and max(claimed.values()) == 1  # no job claimed twice
    assert sorted(completed) == sorted(ids)  # every completion was accepted, once
    assert sum(1 for _, got, _ in reports if got) >= 2  # they really did compete
    assert store.counts() == {"queued": 0, "running": 0, "completed": N_JOBS}
    for job_id in ids:
        job = store.get(job_id, with_input=False)
        assert job.status == JobStatus.COMPLETED and job.attempts == 1 and job.succeeded
        assert job.result.prompt == "a photo by %s img" % next(w for w, got, _ in reports if job_id in got)
    store.close()
