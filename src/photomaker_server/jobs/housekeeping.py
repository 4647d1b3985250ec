"""Background upkeep of the queue, run by every API process in a thread of its own.

Every tick: jobs whose worker died go back to the queue (or fail after ``max_attempts``) and queued jobs past their
start deadline fail with ``request_timeout``. Every minute: finished jobs older than the retention time are deleted
together with their output files, and so are stored files (uploads) older than it. (Webhooks are delivered by
:mod:`photomaker_server.webhooks`, in a thread of their own.)
"""

from __future__ import annotations

import logging
import threading
import time

from ..settings import Settings
from ..storage.base import FileStorage
from .results import result_keys
from .protocol import JobStore
from .records import StoreUnavailable

log = logging.getLogger(__name__)
TICK_S = 0.5
CLEANUP_EVERY_S = 60.0
#: How often the worker registry is swept for workers that died without a goodbye.
REGISTRY_CHECK_S = 5.0


class Housekeeper:
    def __init__(self, settings: Settings, store: JobStore, storage: FileStorage,
                 worker_stale_after_s: float | None = None) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        #: Registry rows silent this long are workers that died without a goodbye (None: left alone).
        self.worker_stale_after_s = worker_stale_after_s
        self._last_registry_check = 0.0
        self._thread: threading.Thread | None = None
        self._last_cleanup = 0.0

    def tick(self) -> None:
        # No lease is judged before the database has been reachable for a lease period (see the store); the store
        # says which worker stopped renewing which job.
        self.store.requeue_expired_leases(grace_s=self.settings.lease_seconds)
        self.store.expire_deadlines()
        if self.worker_stale_after_s is not None and time.time() - self._last_registry_check > REGISTRY_CHECK_S:
            self._last_registry_check = time.time()
            self.store.forget_lost_workers(self.worker_stale_after_s, grace_s=self.settings.lease_seconds)
        if time.time() - self._last_cleanup > CLEANUP_EVERY_S:
            self._last_cleanup = time.time()
            self.cleanup()

    def cleanup(self) -> int:
        removed = self.store.cleanup(self.settings.result_ttl_hours * 3600)
        for job in removed:
            for key in result_keys(job.result, self._key_from_url):  # by key; old results by their URL
                self.storage.delete(key)
        self.storage.purge_uploads()
        self.storage.delete_older_than(self.settings.result_ttl_hours * 3600)  # uploaded inputs, too
        self.store.expire_stored_files()  # and what the storage quotas count of them
        return len(removed)

    def _key_from_url(self, url: str) -> str | None:
        return self.storage.key_from_url(url, self.settings.base_url)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except StoreUnavailable:  # said once per outage by the store; the next tick retries
                pass
            except Exception:  # keep the loop alive; the next tick retries
                log.exception("housekeeping tick failed")
            stop.wait(TICK_S)

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(stop,), name="housekeeping", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
