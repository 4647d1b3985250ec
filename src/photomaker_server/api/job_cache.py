"""This API process's short memory of the jobs clients poll, kept fresh by the job wake-ups.

Why: fal's clients poll ``/status`` (the Python client every 100 ms), so most polls ask about a job that has not
changed since the last one. Answering those from memory, on the event loop, costs no thread hop and no database
round trip; only a poll after a change (or after :data:`TTL_S`) reads the database, in a worker thread.

Fresh how: every change of a job's status announces ``job:<id>`` (from whichever process made it: the worker,
another replica, this one), and the wake-up transport hands every topic it hears to :meth:`JobCache.heard`
before it wakes anyone. ``job:<id>`` drops that job; since a queued job's *position* moves when any job ahead of
it is claimed, cancelled or expires (each announces its own ``job:<id>``) or a higher-priority submit arrives
(``work``), both also drop every queued entry. ``WAKE_ALL`` (events were missed) drops everything.

Safe how: wake-ups are best-effort, so an entry also expires after :data:`TTL_S` (a missed event costs at most
that much staleness, like the streams' fallback wait). Nothing is answered from memory while the database is known
to be unreachable (``health.up``: the request reads, fails and gets the usual 503 after ``db_wait``'s wait) or
while the transport cannot hear events (``wakeups.live``). A read that raced with an event is not kept
(:meth:`version`). A cancel from this process drops its entry at once (read your own writes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..jobs.health import DatabaseHealth
from ..jobs.records import WORK_TOPIC, Job, JobStatus
from ..jobs.wakeups import WAKE_ALL, Wakeups

__all__ = ["Cached", "JobCache", "MAX_ENTRIES", "TTL_S"]

#: The longest an entry is answered without reading the database (bounds the cost of a lost wake-up).
TTL_S = 1.0
#: Entries kept at most; the oldest go first (a poll of an evicted job just reads the database).
MAX_ENTRIES = 20_000
#: A job whose result carries more inline image data than this (``sync_mode``: data URIs of megabytes) is not kept:
#: 20,000 of them would be gigabytes of this process's memory. Its polls read the database, as before the cache.
MAX_INLINE_CHARS = 64 * 1024

_JOB_PREFIX = "job:"


@dataclass(frozen=True)
class Cached:
    """A job as last read (without its input), and its status body (``None`` until a status poll made one)."""

    job: Job
    status_body: dict[str, Any] | None
    expires: float


class JobCache:
    """See the module docstring. Thread-safe: the wake-up transport calls :meth:`heard` from its own thread."""

    def __init__(self, wakeups: Wakeups, health: DatabaseHealth, *, ttl_s: float = TTL_S,
                 max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self._wakeups, self._health = wakeups, health
        self._ttl_s, self._max_entries, self._clock = ttl_s, max_entries, clock
        self._lock = threading.Lock()
        self._entries: dict[str, Cached] = {}
        self._queued: set[str] = set()
        self._version = 0
        observe = getattr(wakeups, "observe", None)
        #: Without a way to hear changes, nothing is kept (answers would go stale for TTL_S after each change).
        self._stop_observing = observe(self.heard) if observe is not None and ttl_s > 0 else None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._stop_observing is not None

    def _trusted(self) -> bool:
        return self.enabled and self._health.up and getattr(self._wakeups, "live", True)

    def lookup(self, job_id: str) -> Cached | None:
        """The fresh entry for ``job_id``, or None (then read the database and :meth:`keep` what was read)."""
        entry = self._entries.get(job_id)
        if entry is None or entry.expires <= self._clock() or not self._trusted():
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def version(self) -> int:
        """Take this *before* reading a job; :meth:`keep` drops a read that an event may have made stale."""
        return self._version

    def keep(self, version: int, job: Job, status_body: dict[str, Any] | None = None) -> None:
        """Remember ``job`` (read after :meth:`version` returned ``version``) and its status body, if any."""
        if not self.enabled or _inline_chars(job) > MAX_INLINE_CHARS:
            return
        with self._lock:
            if version != self._version:  # something changed while it was read: the next poll reads again
                return
            if job.id not in self._entries and len(self._entries) >= self._max_entries:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self._queued.discard(oldest)
            self._entries.pop(job.id, None)  # re-inserted last: eviction goes by age of the read
            self._entries[job.id] = Cached(job, status_body, self._clock() + self._ttl_s)
            if job.status == JobStatus.QUEUED:
                self._queued.add(job.id)
            else:
                self._queued.discard(job.id)

    def forget(self, job_id: str) -> None:
        """Drop one job (this process changed it: a cancel)."""
        with self._lock:
            self._version += 1
            self._entries.pop(job_id, None)
            self._queued.discard(job_id)

    def heard(self, topic: str) -> None:
        """A wake-up this process heard (called by the transport's thread before subscribers wake)."""
        is_job = topic.startswith(_JOB_PREFIX)
        if not (is_job or topic == WORK_TOPIC or topic == WAKE_ALL):
            return  # log lines, key changes: no status or result changed (a poll with logs never comes here)
        with self._lock:
            self._version += 1
            if topic == WAKE_ALL:
                self._entries.clear()
                self._queued.clear()
                return
            if is_job:
                job_id = topic[len(_JOB_PREFIX):]
                self._entries.pop(job_id, None)
                self._queued.discard(job_id)
            for job_id in self._queued:  # positions move: every queued job reads again
                self._entries.pop(job_id, None)
            self._queued.clear()

    def close(self) -> None:
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None
        with self._lock:
            self._entries.clear()
            self._queued.clear()


def _inline_chars(job: Job) -> int:
    """Characters of image data held in the job's result itself (data URIs of ``sync_mode``)."""
    if job.result is None:
        return 0
    return sum(len(image.file.url) for image in job.result.images if image.file.url is not None)
