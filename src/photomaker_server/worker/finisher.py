"""Storing a finished job's outputs and outcome off the device's path.

Once a job's inference is done, its images still have to be encoded, put into the file storage and the job
completed in the database: tens of milliseconds of CPU and I/O during which the device would sit idle. With
prefetching on (:mod:`.feed`) the worker hands that to this thread and starts the next job at once. One job is
finished at a time, in order; at most one more waits (so a slow storage or database slows the worker down rather
than piling up finished images in memory).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
#: How long a stopping worker waits for the outcomes still being stored.
DRAIN_S = 60.0


class Finisher:
    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._work, name="finisher", daemon=True)
        self._thread.start()

    def submit(self, finish: Callable[[], None]) -> None:
        """Run ``finish()`` on the finisher thread, after the ones submitted before (blocks while one waits)."""
        self._queue.put(finish)

    def close(self, timeout: float = DRAIN_S) -> None:
        """Finish what was submitted, then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("a finished job's outcome is still being stored after %.0f s; leaving it to its lease", timeout)

    def _work(self) -> None:
        while (finish := self._queue.get()) is not None:
            try:
                finish()
            except Exception:  # noqa: BLE001 - the finish functions handle their own failures; never lose the thread
                log.exception("storing a finished job's outcome failed")
