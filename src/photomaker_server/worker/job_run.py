"""One claimed job while it runs: its log lines, its lease, and the flags the engine polls between steps."""

from __future__ import annotations

import logging
import threading
import time

from ..jobs.protocol import JobStore
from ..jobs.records import Job, JobStatus, LeaseLost, StoreUnavailable

log = logging.getLogger(__name__)
#: How often a running job looks for a cancel request (a read; the lease is renewed less often).
CANCEL_POLL_S = 0.5
#: While the job database is unreachable, how often the log writer tries again (its lines are kept meanwhile).
LOG_RETRY_S = 0.5


class JobRun:
    """One claimed job: logging into the store, lease renewal, and the cancel/lost flags the engine polls.

    Log lines go to the store from a writer thread, in order: a step's log line must never make the denoising
    loop wait for the database's write lock (an API busy with submits can hold it for a while). Lines logged while
    a write is in flight go together in the next one (one commit, one wake-up per burst); the lines still waiting
    when the job ends can be taken (:meth:`take_pending`) and written with the completing transaction. Once the
    job is about to end (:meth:`hold_lines`) new lines wait for that transaction instead of making it wait for a
    commit of their own.
    """

    def __init__(self, store: JobStore, job: Job, worker_id: str, lease_s: float) -> None:
        self.store, self.job, self.worker_id, self.lease_s = store, job, worker_id, lease_s
        self.cancelled = threading.Event()
        self.lease_lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job.id[:8]}", daemon=True)
        self._state = threading.Condition()
        self._pending: list[tuple[str, str]] = []  # guarded by _state, like the two flags below
        self._writing = False
        self._held = False
        self._closed = False
        #: Set once the worker is storing the job's outcome: from then on that call is the fence (it is refused
        #: if the lease was taken), and the job's own end must not read as a taken lease.
        self._ending = False
        self._writer = threading.Thread(target=self._write_logs, name=f"logs-{job.id[:8]}", daemon=True)

    def __enter__(self) -> JobRun:
        self._thread.start()
        self._writer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._writer.join(timeout=30)
        self._done.set()
        self._thread.join(timeout=5)

    def _write_logs(self) -> None:
        while True:
            with self._state:
                while (not self._pending or self._held) and not self._closed:
                    self._state.wait()
                if not self._pending or self.lease_lost.is_set():
                    self._pending.clear()
                    return  # closed, and every line written (or fenced: nothing more may be written)
                batch, self._pending, self._writing = self._pending, [], True
            retry = False
            try:
                self.store.append_logs(self.job.id, batch, held_by=self.worker_id)
            except LeaseLost:
                self.fence("its log lines were refused")
            except StoreUnavailable:  # the database is restarting: keep the lines (the outage is logged once)
                retry = True
            except Exception:  # a log line is not worth a failed job
                log.exception("could not store %d log line(s) of %s", len(batch), self.job.id)
            finally:
                with self._state:
                    self._writing = False
                    if retry and not self.lease_lost.is_set():
                        self._pending[:0] = batch
                    self._state.notify_all()
            if retry:
                self._done.wait(LOG_RETRY_S)

    def hold_lines(self) -> None:
        """Keep the lines logged from now on for :meth:`take_pending` (or :meth:`flush`) rather than writing them
        as they come: the job is about to end, and a write in flight would hold up its completion."""
        with self._state:
            self._held = True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every line logged so far is in the store (before the job's status changes), or the lease is
        lost (they are dropped then), or ``timeout`` seconds have passed."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._state:
            self._held = False
            self._state.notify_all()
            while (self._writing or self._pending) and not self.lease_lost.is_set():
                left = LOG_RETRY_S if end is None else min(LOG_RETRY_S, end - time.monotonic())
                if left <= 0:
                    return
                self._state.wait(left)

    def take_pending(self) -> list[tuple[str, str]]:
        """Wait for the write in flight, then hand over the lines not yet written (``(message, level)``, in order):
        the caller stores them in the transaction that completes the job, saving a commit on its critical path."""
        with self._state:
            while self._writing:
                self._state.wait()
            lines, self._pending = self._pending, []
            return lines

    def _renew(self) -> None:
        """Renew the lease every third of its length; in between, look for a cancel request every
        ``CANCEL_POLL_S`` with a plain read, so a cancelled job stops within about a step, not a lease period.

        The read also shows whether this worker still holds the job (fencing within half a second, not at the next
        renewal). While the database is unreachable the lease cannot be renewed and is not judged either (see
        ``requeue_expired_leases``); the first call that reaches it again is a renewal.
        """
        renewed = time.monotonic()
        must_renew = False
        while not self._done.wait(min(CANCEL_POLL_S, self.lease_s / 3)):
            try:
                if must_renew or time.monotonic() - renewed >= self.lease_s / 3:
                    state = self.store.renew_lease(self.job.id, self.worker_id, self.lease_s)
                    renewed, must_renew = time.monotonic(), False
                    if not state.held:
                        self.fence("its lease renewal was refused", watched=True)
                    cancel = state.cancel_requested
                else:
                    job = self.store.get(self.job.id, with_input=False)
                    if job is None or job.status != JobStatus.RUNNING or job.lease_owner != self.worker_id:
                        self.fence(_holder(job), watched=True)
                    cancel = bool(job and job.cancel_requested)
            except StoreUnavailable:  # logged once per outage by the store; renew as soon as it is back
                must_renew = True
                continue
            except Exception:  # noqa: BLE001 - a database error of another kind: try again shortly
                log.exception("lease renewal or cancel check of %s failed", self.job.id)
                must_renew = True
                continue
            if cancel:
                self.cancelled.set()

    def ending(self) -> None:
        """The worker is about to store the job's outcome (complete, fail, release). The lease is still renewed (the
        outcome may wait out a database outage), but what the watch sees from now on may be this worker's own doing."""
        self._ending = True

    def fence(self, why: str, *, watched: bool = False) -> None:
        """This worker no longer holds the job: stop the run and write nothing more for it (said once)."""
        if self.lease_lost.is_set() or (watched and self._ending):
            return
        self.lease_lost.set()
        log.warning("job %s: this worker (%s) no longer holds its lease (%s); stopping the run and writing nothing "
                    "more for it: the job is the lease holder's now", self.job.id, self.worker_id, why)
        with self._state:
            self._pending.clear()
            self._state.notify_all()

    def handed_back(self) -> None:
        """The job went back to the queue (``JobStore.release``): write nothing more for it. Unlike :meth:`fence`
        this is no surprise, so nothing is said."""
        self.lease_lost.set()
        with self._state:
            self._pending.clear()
            self._state.notify_all()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lease_lost.is_set()

    def log(self, message: str, level: str = "INFO") -> None:
        with self._state:
            self._pending.append((message, level))
            self._state.notify_all()


def _holder(job: Job | None) -> str:
    """Who has the job now, for the fencing line."""
    if job is None:
        return "the job is gone"
    if job.status == JobStatus.RUNNING:
        return f"it is running on {job.lease_owner} now"
    return f"it is {job.status.value} now"
