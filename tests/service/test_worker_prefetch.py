"""The worker reads the next job's inputs while the device is busy (``prefetch_depth``), in process, on SQLite.

The engine here is a stand-in whose ``generate`` waits until the test lets each job through (by seed), so what the
worker does meanwhile is observable: which jobs it holds, what it read, what it settled without the device.
"""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from photomaker_server.engine.errors import GenerationCancelled
from photomaker_server.engine.service import GenerationResult
from photomaker_server.jobs.records import CANCELLED_ERROR, RELEASED_MESSAGE, REQUEST_TIMEOUT_ERROR, JobStatus
from photomaker_server.settings import APP_ID, Settings
from photomaker_server.worker.process import Worker
from service.svc import small_stored

OWNER = "owner-a"


class GatedEngine:
    """Generates a job only once its seed is let through (:meth:`let`); says which seeds reached it, in order."""

    placement = SimpleNamespace(device="cpu", dtype="torch.float32")
    id_cache = SimpleNamespace(hits=0, misses=0)

    def __init__(self) -> None:
        self.started: queue.Queue[int] = queue.Queue()
        self.seen: list[int] = []
        self._gates: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def load_all(self, version: str) -> None:
        pass

    def loaded_bases(self) -> list[str]:
        return ["photomaker"]

    def gate(self, seed: int) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(seed, threading.Event())

    def let(self, *seeds: int) -> None:
        for seed in seeds:
            self.gate(seed).set()

    def next_started(self, timeout: float = 10) -> int:
        return self.started.get(timeout=timeout)

    def generate(self, request, on_log=None, on_step=None, should_cancel=None, on_denoise_start=None):  # noqa: ANN001
        seed = request.options.seed
        self.seen.append(seed)
        self.started.put(seed)
        gate = self.gate(seed)
        while not gate.wait(0.02):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled("cancelled")
        if on_denoise_start is not None:
            on_denoise_start()
        if on_step is not None:
            on_step(1, 1)
        return GenerationResult(images=[Image.new("RGB", (8, 8), "red")], seed=seed, prompt=request.options.prompt,
                                negative_prompt="", width=8, height=8, demo_model=False, timings={})


class Running:
    """A worker running in a thread; records when each job's inputs were read."""

    def __init__(self, settings: Settings) -> None:
        self.engine = GatedEngine()
        self.worker = Worker(settings, engine=self.engine)
        self.store = self.worker.store
        self.read: list[tuple[str, float]] = []
        read_inputs = self.worker.read_inputs

        def recording(claimed):  # noqa: ANN001, ANN202
            read_inputs(claimed)
            self.read.append((claimed.job.id, time.monotonic()))

        self.worker.read_inputs = recording
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def submit(self, seed: int, owner: str = OWNER, **kwargs) -> str:  # noqa: ANN003
        return self.store.submit(owner, APP_ID, small_stored(seed=seed), **kwargs).id

    def stop(self, timeout: float = 20) -> None:
        self.worker.shutdown.request()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"


def _settings(tmp_path, **fields) -> Settings:  # noqa: ANN001, ANN003
    return Settings(data_dir=tmp_path, api_keys=["k"], **fields)


def wait_for(predicate, timeout: float = 10, what: str = "condition"):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def running(tmp_path):
    made: list[Running] = []

    def start(started: bool = True, **fields) -> Running:  # noqa: ANN003
        run = Running(_settings(tmp_path, **fields))
        made.append(run)
        return run.start() if started else run

    yield start
    for run in made:
        run.engine.let(*range(100))
        if run.thread.is_alive():
            run.stop()
        elif run.thread.ident is None:  # never started: close what it opened
            run.worker.deployment.close()


def _messages(store, job_id: str) -> list[str]:  # noqa: ANN001
    return [line.message for line in store.logs(job_id)]


def test_the_next_job_is_read_while_the_device_is_busy_and_follows_at_once(running):
    w = running(prefetch_depth=1)
    first, second, third = w.submit(1), w.submit(2), w.submit(3)
    assert w.engine.next_started() == 1
    # While job 1 is on the device, job 2 is claimed and its inputs are read; job 3 is not claimed (depth 1).
    wait_for(lambda: any(job_id == second for job_id, _ in w.read), what="job 2's inputs")
    held = w.store.get(second)
    assert held.status == JobStatus.RUNNING and held.lease_owner == w.worker.worker_id and held.attempts == 1
    time.sleep(0.3)
    assert w.store.get(third).status == JobStatus.QUEUED, "claimed further ahead than the prefetch depth"
    assert w.store.get(first).status == JobStatus.RUNNING

    let_go = time.monotonic()
    w.engine.let(1)
    assert w.engine.next_started() == 2
    on_device = time.monotonic()
    wait_for(lambda: w.store.get(first).succeeded, what="job 1 stored")  # stored while job 2 is on the device
    read_second = [t for job_id, t in w.read if job_id == second]
    assert len(read_second) == 1 and read_second[0] < let_go, "job 2's inputs were read before job 1 finished"
    assert on_device - let_go < 2.0
    w.engine.let(2, 3)
    wait_for(lambda: w.store.get(third).succeeded, what="job 3")
    assert w.engine.seen == [1, 2, 3]
    lines = _messages(w.store, second)
    assert any(m.startswith("Inputs ready; waited") for m in lines), lines
    assert lines[-1] == "Completed"
    # Claimed ahead: its log says so, and says "Started" once, when it reached the device (after job 1's start).
    claimed = [i for i, m in enumerate(lines) if m.startswith("Claimed by worker")]
    started = [i for i, m in enumerate(lines) if m.startswith("Started on worker")]
    assert len(claimed) == 1 and len(started) == 1 and claimed[0] < started[0], lines
    assert [m for m in _messages(w.store, first) if m.startswith(("Started", "Claimed"))] == [
        f"Started on worker {w.worker.worker_id}"]


def test_depth_0_claims_only_when_the_device_is_free(running):
    w = running(prefetch_depth=0)
    first, second = w.submit(1), w.submit(2)
    assert w.engine.next_started() == 1
    time.sleep(0.5)
    waiting = w.store.get(second)
    assert waiting.status == JobStatus.QUEUED and waiting.lease_owner is None
    assert [job_id for job_id, _ in w.read] == [first]
    w.engine.let(1, 2)
    wait_for(lambda: w.store.get(second).succeeded, what="job 2")
    assert w.engine.seen == [1, 2]


def test_jobs_reach_the_device_in_the_queue_s_fair_order(running, tmp_path):
    from photomaker_server.jobs.sql import SQLJobStore

    plan = [("x", 1), ("x", 2), ("x", 3), ("y", 4), ("y", 5), ("z", 6)]
    # The order the store's own claim gives, on a store of its own with the same submissions.
    reference = SQLJobStore(tmp_path / "reference.db")
    ids = {reference.submit(owner, APP_ID, small_stored(seed=seed)).id: seed for owner, seed in plan}
    expected = []
    while (job := reference.claim("ref", 30)) is not None:
        expected.append(ids[job.id])
    reference.close()
    assert sorted(expected) == [1, 2, 3, 4, 5, 6] and expected != [1, 2, 3, 4, 5, 6], "turns interleave the owners"

    w = running(started=False, prefetch_depth=1)
    for owner, seed in plan:  # all queued before the worker looks
        w.submit(seed, owner=owner)
    w.engine.let(*range(1, 7))
    w.start()
    wait_for(lambda: len(w.engine.seen) == 6, what="every job")
    assert w.engine.seen == expected


def test_a_prefetched_job_that_is_cancelled_completes_as_cancelled_and_never_runs(running):
    w = running(prefetch_depth=1)
    first, second = w.submit(1), w.submit(2)
    assert w.engine.next_started() == 1
    wait_for(lambda: any(job_id == second for job_id, _ in w.read), what="job 2's inputs")
    assert w.store.request_cancel(second, OWNER).value == "requested"
    cancelled = wait_for(lambda: (j := w.store.get(second)).is_finished and j, what="job 2 cancelled")
    assert cancelled.error == CANCELLED_ERROR and cancelled.error_type == "client_cancelled"
    assert w.store.get(first).status == JobStatus.RUNNING, "the job on the device goes on"
    third = w.submit(3)  # the place is free again: the next job is prefetched
    wait_for(lambda: any(job_id == third for job_id, _ in w.read), what="job 3's inputs")
    w.engine.let(1, 3)
    wait_for(lambda: w.store.get(third).succeeded, what="job 3")
    assert 2 not in w.engine.seen and w.store.get(first).succeeded


def test_a_stopping_worker_hands_its_prefetched_job_back_at_once_and_finishes_the_running_one(running, tmp_path):
    w = running(prefetch_depth=1, shutdown_grace_s=600)
    first, second = w.submit(1), w.submit(2)
    assert w.engine.next_started() == 1
    wait_for(lambda: any(job_id == second for job_id, _ in w.read), what="job 2's inputs")
    w.worker.shutdown.request()
    # Back in the queue while job 1 is still on the device, its attempt not counted.
    back = wait_for(lambda: (j := w.store.get(second)).status == JobStatus.QUEUED and j, timeout=5, what="hand-back")
    assert back.attempts == 0 and back.lease_owner is None
    assert _messages(w.store, second)[-1] == RELEASED_MESSAGE
    assert w.store.get(first).status == JobStatus.RUNNING
    w.engine.let(1)
    w.thread.join(20)
    assert not w.thread.is_alive()
    assert w.store.get(first).succeeded and 2 not in w.engine.seen

    # The next worker runs it from the start (attempt 1: the hand-back did not count).
    nxt = running(prefetch_depth=1)
    nxt.engine.let(2)
    done = wait_for(lambda: (j := nxt.store.get(second)).is_finished and j, what="job 2 on the next worker")
    assert done.succeeded and done.attempts == 1
    assert not any(m.startswith("Worker lost") for m in _messages(nxt.store, second))


def test_a_prefetched_job_past_its_start_deadline_fails_as_a_request_timeout(running):
    w = running(prefetch_depth=1)
    first = w.submit(1)
    assert w.engine.next_started() == 1
    second = w.submit(2, start_deadline=w.store.now() + 1.0)
    wait_for(lambda: any(job_id == second for job_id, _ in w.read), what="job 2's inputs")
    timed_out = wait_for(lambda: (j := w.store.get(second)).is_finished and j, timeout=5, what="job 2's deadline")
    assert timed_out.error == REQUEST_TIMEOUT_ERROR and timed_out.error_type == "request_timeout"
    assert w.store.get(first).status == JobStatus.RUNNING
    w.engine.let(1, 2)
    wait_for(lambda: w.store.get(first).succeeded, what="job 1")
    assert w.engine.seen == [1]


def test_a_prefetched_job_with_bad_inputs_fails_at_once_without_disturbing_the_running_one(running):
    w = running(prefetch_depth=1)
    first = w.submit(1)
    assert w.engine.next_started() == 1
    body = small_stored(seed=2, image_archive_url="data:image/png;base64,bm90IGFuIGltYWdl")
    bad = w.store.submit(OWNER, APP_ID, body).id
    failed = wait_for(lambda: (j := w.store.get(bad)).is_finished and j, what="the bad job")
    assert failed.error_type == "input_error", failed.error
    assert w.store.get(first).status == JobStatus.RUNNING
    w.engine.let(1)
    wait_for(lambda: w.store.get(first).succeeded, what="job 1")
    assert w.engine.seen == [1]


def test_the_lease_of_a_prefetched_job_is_renewed_while_it_waits(running):
    w = running(prefetch_depth=1, lease_seconds=1.5)
    w.submit(1)
    assert w.engine.next_started() == 1
    second = w.submit(2)
    wait_for(lambda: any(job_id == second for job_id, _ in w.read), what="job 2's inputs")
    first_expiry = w.store.get(second).lease_expires_at
    time.sleep(2.5)  # past the first lease: renewed meanwhile, and nobody requeued it
    held = w.store.get(second)
    assert held.status == JobStatus.RUNNING and held.lease_owner == w.worker.worker_id
    assert held.lease_expires_at > first_expiry and w.store.requeue_expired_leases() == []
    w.engine.let(1, 2)
    wait_for(lambda: w.store.get(second).succeeded, what="job 2")
    assert w.store.get(second).attempts == 1


def test_a_depth_of_2_holds_two_jobs_ahead_and_no_more(running):
    w = running(prefetch_depth=2)
    ids = [w.submit(seed) for seed in (1, 2, 3, 4)]
    assert w.engine.next_started() == 1
    wait_for(lambda: {job_id for job_id, _ in w.read} >= set(ids[1:3]), what="jobs 2 and 3 read")
    time.sleep(0.3)
    assert [w.store.get(i).status for i in ids] == [JobStatus.RUNNING] * 3 + [JobStatus.QUEUED]
    w.engine.let(1, 2, 3, 4)
    wait_for(lambda: w.store.get(ids[3]).succeeded, what="job 4")
    assert w.engine.seen == [1, 2, 3, 4]


def test_an_idle_worker_takes_new_work_before_a_busy_one_claims_it_ahead(running):
    """Two workers, one busy: a job submitted now goes to the idle one, not into the busy one's prefetch slot (the
    claim ahead waits ``AHEAD_DEFER_S``; the idle worker claims on the wake-up). Several rounds: the race this
    deferral settles would otherwise go either way."""
    busy = running()
    first = busy.submit(1)
    assert busy.engine.next_started() == 1  # on the busy worker's device, held there
    idle = running()
    wait_for(lambda: idle.worker.info.state == "ready", what="the second worker to be ready")
    for seed in (2, 3, 4):
        job_id = busy.submit(seed)
        assert idle.engine.next_started() == seed, f"job {seed} did not go to the idle worker"
        idle.engine.let(seed)
        wait_for(lambda: busy.store.get(job_id, with_input=False).is_finished, what=f"job {seed}")
    busy.engine.let(1)
    wait_for(lambda: busy.store.get(first, with_input=False).is_finished, what="the first job")
    assert busy.engine.seen == [1]
