"""How a worker process stops: SIGTERM/SIGINT, the grace period, and noticing that its parent died.

A stop request has two stages. *Stopping*: claim no new job, let the one in hand finish. *Releasing*: the grace
period is over (or the stop is urgent), so the job in hand is abandoned at its next denoising step and handed back
to the queue at once (``JobStore.release``), rather than left for its lease to run out.

A worker spawned by ``photomaker serve`` must never outlive it: a worker whose parent was killed would hold GPU
memory and keep claiming jobs next to the worker of a restarted server. Linux's ``PR_SET_PDEATHSIG`` makes the
kernel send it SIGTERM when the parent goes; a cheap thread that watches ``os.getppid()`` covers other systems (and
the case where the signal is missed). Either way the worker releases its job and exits.

This module stays free of torch and of the worker itself (no import of :mod:`.process`): the spawned process runs
:func:`.main.spawned_worker_main` first, which arranges all this before the heavy imports.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from ..parent_death import set_parent_death_signal, watch_parent

__all__ = ["RELEASE_NOW_SIGNAL", "StopRequest", "install_stop_handlers", "set_parent_death_signal", "watch_parent"]

log = logging.getLogger(__name__)
#: Sent by ``photomaker serve`` to its worker on a second Ctrl-C / SIGTERM: skip the rest of the grace period.
RELEASE_NOW_SIGNAL = signal.SIGUSR1


class StopRequest:
    """The worker's shutdown state, safe to set from a signal handler (no locks, no threads started there)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stopping = threading.Event()
        self._release_now = threading.Event()
        self._deadline: float | None = None

    def request(self, release_now: bool = False) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_s
        self.stopping.set()
        if release_now:
            self._release_now.set()

    def release_due(self) -> bool:
        """True once the job in hand should be given back (grace period over, or an urgent stop)."""
        if self._release_now.is_set():
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline


def install_stop_handlers(
    stop: StopRequest, *, parent_pid: int | None, interrupt_now: Callable[[], bool]
) -> None:
    """SIGTERM (and, for a standalone worker, SIGINT) request a graceful stop; a second one, or SIGTERM after the
    parent died, releases the job at once. ``interrupt_now()`` says whether to abort the current Python code
    (the model is still loading: no job is held, so there is nothing to finish)."""

    def orphaned() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # A standalone worker's second signal means "now". A spawned one can get SIGTERM twice for one stop
        # (systemd signals the whole cgroup, the supervisor signals it too), so there only RELEASE_NOW_SIGNAL or a
        # dead parent skip the grace period.
        urgent = orphaned() or signum == RELEASE_NOW_SIGNAL or (parent_pid is None and stop.stopping.is_set())
        stop.request(release_now=urgent)
        if interrupt_now():
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(RELEASE_NOW_SIGNAL, on_signal)
    # Under ``serve`` a terminal's Ctrl-C reaches the whole process group; the parent decides and tells us.
    signal.signal(signal.SIGINT, signal.SIG_IGN if parent_pid is not None else on_signal)

