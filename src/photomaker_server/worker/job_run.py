"""One claimed job while it runs: its log lines, its lease, and the flags the engine polls between steps."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..jobs.protocol import JobStore
from ..jobs.records import Job

log = logging.getLogger(__name__)
#: How often a running job looks for a cancel request (a read; the lease is renewed less often).
CANCEL_POLL_S = 0.5


class JobRun:
    """One claimed job: logging into the store, lease renewal, and the cancel/lost flags the engine polls.

    Log lines go to the store from a writer thread, in order: a step's log line must never make the denoising
    loop wait for the database's write lock (an API busy with submits can hold it for a while).
    """

    def __init__(self, store: JobStore, job: Job, worker_id: str, lease_s: float) -> None:
        self.store, self.job, self.worker_id, self.lease_s = store, job, worker_id, lease_s
        self.cancelled = threading.Event()
        self.lease_lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job.id[:8]}", daemon=True)
        self._lines: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_logs, name=f"logs-{job.id[:8]}", daemon=True)

    def __enter__(self) -> JobRun:
        self._thread.start()
        self._writer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lines.put(None)
        self._writer.join(timeout=30)
        self._done.set()
        self._thread.join(timeout=5)

    def _write_logs(self) -> None:
        while True:
            item = self._lines.get()
            try:
                if item is None:
                    return
                self.store.append_log(self.job.id, *item)
            except Exception:  # a log line is not worth a failed job
                log.exception("could not store a log line of %s", self.job.id)
            finally:
                self._lines.task_done()

    def flush(self) -> None:
        """Wait until every line logged so far is in the store (before the job's status changes)."""
        self._lines.join()

    def _renew(self) -> None:
        """Renew the lease every third of its length; in between, look for a cancel request every
        ``CANCEL_POLL_S`` with a plain read, so a cancelled job stops within about a step, not a lease period."""
        renewed = time.monotonic()
        while not self._done.wait(min(CANCEL_POLL_S, self.lease_s / 3)):
            try:
                if time.monotonic() - renewed >= self.lease_s / 3:
                    state = self.store.renew_lease(self.job.id, self.worker_id, self.lease_s)
                    renewed = time.monotonic()
                    if not state.held:
                        self.lease_lost.set()
                    cancel = state.cancel_requested
                else:
                    job = self.store.get(self.job.id, with_input=False)
                    cancel = bool(job and job.cancel_requested)
            except Exception:  # a busy database: try again next period (the lease has slack)
                log.exception("lease renewal or cancel check failed")
                continue
            if cancel:
                self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lease_lost.is_set()

    def log(self, message: str, level: str = "INFO") -> None:
        self._lines.put((message, level))
