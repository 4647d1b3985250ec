"""The worker process's entry points: ``photomaker worker`` (:func:`run_worker`) and the worker ``photomaker serve``
spawns (:func:`spawned_worker_main`).

Here the process is put together: logging, the worker on its deployment (waiting for the job database if it is
not up yet), the signal handlers and the parent watch of :mod:`.shutdown`, then :meth:`.process.Worker.run`.
:mod:`.process` holds the worker itself and :mod:`.shutdown` the stop machinery; neither imports this module.

This module's own imports stay light (no database driver, no torch): a spawned worker runs
:func:`spawned_worker_main` first, which must ignore the terminal's Ctrl-C and tie the process's life to its parent
*before* the heavy imports, so the worker itself is imported when it is opened (:func:`_open_worker`).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from ..logs import configure_logging
from ..parent_death import set_parent_death_signal, watch_parent
from .shutdown import install_stop_handlers

if TYPE_CHECKING:
    from ..settings import Settings
    from .process import Worker

log = logging.getLogger(__name__)
#: Waits between tries when the job database cannot be reached at start-up.
START_BACKOFF_S = (1, 2, 5, 10, 30)


def spawned_worker_main(settings: Settings, parent_pid: int) -> None:
    """Entry point of the worker process ``photomaker serve`` spawns: tie its life to the parent's, then run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the heavy imports: the parent handles Ctrl-C
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        return
    run_worker(settings, parent_pid=parent_pid)


def run_worker(settings: Settings, parent_pid: int | None = None) -> None:
    """Process entry point: ``photomaker worker``, or (with ``parent_pid``) the worker ``photomaker serve`` spawns.

    SIGTERM/SIGINT: claim nothing more, finish the job in hand within ``shutdown_grace_s`` or hand it back to the
    queue (a prefetched job goes back at once), then return. With ``parent_pid``, the death of that process stops
    the worker at once (jobs handed back).
    """
    configure_logging(settings.log_format, "worker")
    worker = _open_worker(settings)
    install_stop_handlers(worker.shutdown, parent_pid=parent_pid, interrupt_now=lambda: worker.loading)
    if parent_pid is not None:
        def orphaned() -> None:
            log.warning("the server process (pid %s) is gone; stopping this worker now", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)  # the signal handler decides, in the main thread

        watch_parent(parent_pid, orphaned)
    worker.run()


def _open_worker(settings: Settings) -> Worker:
    """A worker on the deployment; while the job database is unreachable (restarting, not up yet), try again
    with backoff rather than exit: a supervisor restarting us in a loop would gain nothing."""
    from ..jobs.records import StoreUnavailable
    from .process import Worker  # the heavy part: after spawned_worker_main's set-up (see the module docstring)

    for attempt in itertools.count():
        try:
            return Worker(settings)
        except StoreUnavailable as exc:
            delay = START_BACKOFF_S[min(attempt, len(START_BACKOFF_S) - 1)]
            log.warning("job database unreachable (%s); trying again in %ss", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
