"""What this process knows about its job database: reachable or not, since when, how often it came back.

Why a process-wide view: an outage is one event, seen by every thread at once (the API's requests, housekeeping,
a worker's lease renewal, its log writer, its heartbeat). Each of them used to log its own traceback every retry;
now the store reports every outcome here and this object says it once: one warning when the database goes away,
one line with the count of failed calls when it is back. The same view answers the questions that need it:

* the reclaimer judges leases only after the database has been reachable for a full lease period
  (:meth:`reachable_for`), so time during which nobody could renew a lease is never held against a worker;
* ``/metrics`` answers from memory while the database is down (``photomaker_database_up 0``);
* the API holds a request while the database reconnects (:mod:`photomaker_server.api.db_wait`);
* a worker renews its lease at once when the database is back (``on_reconnect`` callbacks).

Times are the store's clock (tests inject a fake one), so "a lease period of reachable time" and the lease
itself are measured on the same clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("photomaker_server.jobs.database")


class DatabaseHealth:
    """Thread-safe; every method is cheap when nothing changes (one attribute read on the success path)."""

    def __init__(self, clock: Callable[[], float] = time.time, name: str = "job database") -> None:
        self._clock = clock
        self._name = name
        self._lock = threading.Lock()
        self.up = True
        #: When the database became reachable for this process: open, or the end of the last outage.
        self.reachable_since = clock()
        #: When the current outage began (store clock); None while up.
        self.down_since: float | None = None
        #: Calls that failed in the current outage (reported when it ends).
        self.failures = 0
        #: Outages this process has seen end (each one a reconnect).
        self.reconnects = 0
        self.last_error = ""
        #: Seconds the last outage lasted (0 before any).
        self.last_outage_s = 0.0
        self._listeners: list[Callable[[], None]] = []

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the thread whose call succeeded first) when an outage ends."""
        with self._lock:
            self._listeners.append(callback)

    def succeeded(self) -> None:
        """A call reached the database."""
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            now = self._clock()
            self.last_outage_s = max(0.0, now - (self.down_since or now))
            self.up, self.reachable_since, self.down_since = True, now, None
            failures, self.failures = self.failures, 0
            self.reconnects += 1
            listeners = list(self._listeners)
        log.warning("%s reachable again after %.1f s (%d failed call%s meanwhile); leases are judged again once "
                    "it has been reachable for a full lease period", self._name, self.last_outage_s, failures,
                    "" if failures == 1 else "s")
        for callback in listeners:
            try:
                callback()
            except Exception:  # a listener's bug must not turn a successful call into a failed one
                log.exception("reconnect callback failed")

    def failed(self, error: BaseException | str) -> None:
        """A call could not reach the database (the caller raises ``StoreUnavailable``)."""
        with self._lock:
            self.failures += 1
            self.last_error = _one_line(error)
            if not self.up:
                return
            self.up, self.down_since = False, self._clock()
        log.warning("%s unreachable (%s); retrying quietly: requests wait for it, running jobs keep their leases, "
                    "one line follows when it is back", self._name, self.last_error)

    def reachable_for(self) -> float:
        """Seconds the database has been reachable without a break (0 while it is down)."""
        return max(0.0, self._clock() - self.reachable_since) if self.up else 0.0

    def down_for(self) -> float:
        """Seconds the current outage has lasted (0 while up)."""
        since = self.down_since
        return 0.0 if self.up or since is None else max(0.0, self._clock() - since)


def _one_line(error: BaseException | str) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
