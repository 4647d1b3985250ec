"""Where the worker's next job comes from: claimed when the device is free, or claimed and read ahead of time.

A job has a CPU half (fetching, unpacking and decoding its photos: :mod:`.job_inputs`) and a device half (the
engine). With a prefetch depth of 0 (:class:`InlineFeed`) the worker claims the next job only when the device is
free, so the device waits while the job's inputs are read. With a depth of N (:class:`PrefetchFeed`) a thread
claims up to N jobs ahead and reads their inputs while the device works, so consecutive jobs run back to back.

A prefetched job is an ordinary claim: it is RUNNING in the store and holds a lease, renewed by its
:class:`~.job_run.JobRun` from the claim on, which also watches for cancellation. While it waits for the device:

- a cancel request completes it as cancelled (it never reaches the device);
- its start deadline (``X-Fal-Request-Timeout``) passing fails it with ``request_timeout``, as if it had waited in
  the queue (a job whose inputs are still being read is not judged: that is work on it, as without prefetching);
- inputs that cannot be used fail it with their usual error at once, without disturbing the job on the device;
- a stopping worker hands it back to the queue at once (``JobStore.release``: its attempt does not count);
- if the process dies, its lease runs out and it is requeued, like the job on the device.

Claims go through the store's one claim (its order and per-key fairness), never more than N ahead, and prefetched
jobs reach the device in the order they were claimed. While the device is busy, a claim ahead waits
``AHEAD_DEFER_S`` after the work appeared, so that with several workers an idle one takes a new job first instead of
it queueing behind a busy device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..jobs.protocol import JobStore
from ..jobs.records import Job, StoreUnavailable
from .job_inputs import LoadedJob
from .job_run import JobRun

log = logging.getLogger(__name__)
#: An idle worker sleeps until a ``work`` wake-up (a submit, a requeue). Wake-ups are best-effort, so it also looks
#: at the queue after this long; and it checks for a stop request this often while it waits.
IDLE_RECHECK_S = 2.0
STOP_CHECK_S = 0.2
#: How often jobs waiting for the device are checked for a cancel request, a lost lease or a passed deadline
#: (the flags themselves are kept current by each job's lease thread).
WATCH_S = 0.2
#: A job that waited at least this long for the device says so in its log.
WAIT_WORTH_LOGGING_S = 0.1
#: While its device is busy, the prefetch thread lets this long pass between a job becoming claimable and its claim
#: ahead: an idle worker of the deployment claims within milliseconds of the ``work`` wake-up, and should get the job
#: rather than have it wait behind this worker's device. Short next to any job's inference, so the next job's
#: inputs are still read long before the device is free.
AHEAD_DEFER_S = 0.1


@dataclass
class Claimed:
    """A claimed job on its way to the device."""

    job: Job
    #: Entered at the claim: its lease is renewed and cancel requests are watched from then on.
    run: JobRun
    loaded: LoadedJob | None = None
    #: Why its inputs could not be read (the job fails with it, never reaching the device).
    error: Exception | None = None
    #: ``time.monotonic()`` when its inputs were ready.
    ready_at: float | None = None
    #: Claimed while the device ran another job (its "Started" line is written when it reaches the device).
    ahead: bool = False


class JobHandler(Protocol):
    """What a feed needs of the worker (:class:`.process.Worker`)."""

    store: JobStore
    stop: threading.Event

    def begin(self, job: Job, *, ahead: bool = False) -> Claimed: ...
    def read_inputs(self, claimed: Claimed) -> None: ...
    def must_not_run(self, claimed: Claimed, *, waiting: bool) -> bool: ...
    def settle(self, claimed: Claimed, *, waiting: bool) -> None: ...
    def hand_back(self, claimed: Claimed) -> None: ...
    def release(self, job: Job) -> None: ...
    def claim(self) -> Job | None: ...


class ClaimLoop:
    """Claims the next job; while there is none, sleeps on the ``work`` wake-up (or ``IDLE_RECHECK_S``)."""

    def __init__(self, worker: JobHandler, work) -> None:  # noqa: ANN001 (a wakeups Subscription)
        self.worker, self.work = worker, work
        self.woken = False

    def claim(self, defer_s: float = 0.0) -> Job | None:
        """The claimed job, or None after an idle wait (the caller looks again). ``defer_s``: when there is work,
        wait this long before claiming it (a claim ahead of a busy device gives idle workers the first pick)."""
        # After a `work` wake-up a job is almost surely there: claim at once. Otherwise look first with a read
        # (on SQLite a claim takes the database's write lock, even when it finds nothing).
        runnable = self.woken or self.worker.store.has_work()
        if runnable and defer_s > 0 and self.worker.stop.wait(defer_s):
            return None
        job = self.worker.claim() if runnable else None
        self.woken = False if job is not None else self._idle()
        return job

    def _idle(self) -> bool:
        """Sleep until a ``work`` wake-up (True), a stop request, or ``IDLE_RECHECK_S``."""
        deadline = time.monotonic() + IDLE_RECHECK_S
        while not self.worker.stop.is_set() and time.monotonic() < deadline:
            if self.work.wait(STOP_CHECK_S):
                return True
        return False


class InlineFeed:
    """Prefetch depth 0: the next job is claimed, and its inputs read, only when the device is free."""

    def __init__(self, worker: JobHandler, claims: ClaimLoop) -> None:
        self.worker, self.claims = worker, claims

    def next(self) -> Claimed | None:
        job = self.claims.claim()
        if job is None:
            return None
        if self.worker.stop.is_set():  # the stop came while claiming: this job was never started
            self.worker.release(job)
            return None
        claimed = self.worker.begin(job)
        self.worker.read_inputs(claimed)
        return claimed

    def close(self) -> None:
        pass


class _Slot:
    """One prefetched job and where it stands: ``preparing`` (inputs being read), ``ready``, or gone from the
    feed: ``taken`` (by the device), ``settled`` (finished without the device) or ``released`` (handed back)."""

    def __init__(self, claimed: Claimed) -> None:
        self.claimed, self.state = claimed, "preparing"


class PrefetchFeed:
    """Prefetch depth N ≥ 1: a thread claims up to N jobs ahead of the device and reads their inputs."""

    def __init__(self, worker: JobHandler, claims: ClaimLoop, depth: int) -> None:
        if depth < 1:
            raise ValueError("a prefetch depth of at least 1 (0: InlineFeed)")
        self.worker, self.claims, self.depth = worker, claims, depth
        self._cond = threading.Condition()
        self._slots: deque[_Slot] = deque()  # claim order; only preparing and ready slots; guarded by _cond
        #: True from the moment the device takes a job until it asks for the next (``next``).
        self._device_busy = False
        self._thread = threading.Thread(target=self._fill, name="prefetch", daemon=True)
        self._thread.start()

    # --- the device's side (the worker's main thread) ---------------------------------------------------------
    def next(self) -> Claimed | None:
        """The oldest prefetched job once its inputs are ready; None after ``STOP_CHECK_S`` without one."""
        with self._cond:
            self._device_busy = False
            deadline = time.monotonic() + STOP_CHECK_S
            while not (self._slots and self._slots[0].state == "ready"):
                left = deadline - time.monotonic()
                if left <= 0 or self.worker.stop.is_set():
                    return None
                self._cond.wait(left)
            slot = self._slots.popleft()
            slot.state = "taken"
            self._device_busy = True
            self._cond.notify_all()  # a place for the next prefetch
        claimed = slot.claimed
        waited = time.monotonic() - (claimed.ready_at or time.monotonic())
        if waited >= WAIT_WORTH_LOGGING_S:
            claimed.run.log(f"Inputs ready; waited {waited:.1f} s for the device (it was finishing another request)")
        return claimed

    def close(self, timeout: float = 30.0) -> None:
        """Hand back every job still held (call once the worker is stopping). The thread hands back what it holds
        as soon as it sees the stop; a job whose inputs it is still reading is handed back from here if that takes
        longer than ``timeout``."""
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        self._hand_back_all()

    # --- the prefetch thread ------------------------------------------------------------------------------------
    def _fill(self) -> None:
        try:
            while not self.worker.stop.is_set():
                try:
                    self._settle_due()
                    if self._full():
                        with self._cond:
                            self._cond.wait(WATCH_S)  # a place comes free when the device takes a job
                        continue
                    with self._cond:  # a job on the device, or others already waiting for it
                        ahead = self._device_busy or bool(self._slots)
                    job = self.claims.claim(AHEAD_DEFER_S if ahead else 0.0)
                    if job is not None and self.worker.stop.is_set():  # the stop came while claiming: never started
                        self.worker.release(job)
                    elif job is not None:
                        self._prepare(job, ahead)
                except StoreUnavailable:  # logged once per outage by the store; the leases are kept through it
                    self.worker.stop.wait(1.0)
                except Exception:  # noqa: BLE001 - the database broke otherwise: try again shortly
                    log.exception("prefetch: store error; retrying in a second")
                    self.worker.stop.wait(1.0)
        finally:
            self._hand_back_all()

    def _full(self) -> bool:
        with self._cond:
            return len(self._slots) >= self.depth

    def _prepare(self, job: Job, ahead: bool) -> None:
        claimed = self.worker.begin(job, ahead=ahead)
        slot = _Slot(claimed)
        with self._cond:
            self._slots.append(slot)
        self.worker.read_inputs(claimed)
        with self._cond:
            if slot.state != "preparing":  # handed back from close() while its inputs were read
                return
            if claimed.error is None:
                slot.state, claimed.ready_at = "ready", time.monotonic()
                self._cond.notify_all()
                return
            slot.state = "settled"
            self._slots.remove(slot)
        self.worker.settle(claimed, waiting=False)  # fails with its input error; the device's job goes on

    def _settle_due(self) -> None:
        """Settle the ready jobs that must not run: cancelled, lease lost, or start deadline passed while they
        waited for the device."""
        with self._cond:
            due = [s for s in self._slots if s.state == "ready" and self.worker.must_not_run(s.claimed, waiting=True)]
            for slot in due:
                slot.state = "settled"
                self._slots.remove(slot)
        for slot in due:
            self.worker.settle(slot.claimed, waiting=True)

    def _hand_back_all(self) -> None:
        with self._cond:
            slots = list(self._slots)
            self._slots.clear()
            for slot in slots:
                slot.state = "released"
        for slot in slots:
            self.worker.hand_back(slot.claimed)
