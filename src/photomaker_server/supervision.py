"""What ``photomaker serve`` does besides serving HTTP: keep one worker process alive, and stop in order.

The worker is *spawned* (not forked): CUDA cannot be used in a forked child, and a fresh interpreter keeps the API
process free of torch. If it dies (OOM, kill -9), :class:`WorkerSupervisor` starts a new one with backoff; the job it
was running comes back when its lease expires. :class:`Shutdown` is the order of a stop: refuse new work, stop the
worker, wait for it, then let the HTTP server close.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from .settings import Settings

log = logging.getLogger("photomaker_server")
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
#: Past the grace period, how long the worker gets to hand its job back and exit before it is killed.
STOP_MARGIN_S = 15.0


class WorkerSupervisor:
    """Runs one worker process, restarts it when it dies, and stops it for good on shutdown.

    Spawning and stopping take one lock, and nothing is spawned once a stop has begun, so a restart racing a
    shutdown cannot leave a worker behind.
    """

    def __init__(self, settings: Settings, on_exit: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        #: Called with the pid of a worker process that died (before it is restarted).
        self.on_exit = on_exit
        self._mp = multiprocessing.get_context("spawn")
        self.process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.restarts = 0

    def _spawn(self) -> bool:
        from .worker.main import spawned_worker_main

        with self._lock:
            if self._stop.is_set():
                return False
            process = self._mp.Process(target=spawned_worker_main, args=(self.settings, os.getpid()),
                                       name="photomaker-worker")
            process.start()
            self.process = process
        log.info("worker process started (pid %s)", process.pid)
        return True

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        failures, started_at = 0, time.monotonic()
        while not self._stop.wait(0.5):
            if self.process is not None and not self.process.is_alive():
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                log.warning("worker process exited with code %s; restarting in %ss", self.process.exitcode, delay)
                if self.on_exit is not None:  # e.g. drop its registry entry: /ready waits for the new one
                    self.on_exit(self.process.pid)
                failures += 1
                if self._stop.wait(delay) or not self._spawn():
                    return
                self.restarts += 1
                started_at = time.monotonic()
            elif failures and time.monotonic() - started_at > 60:
                failures = 0  # it has stayed up: the next crash restarts quickly again

    def begin_stop(self) -> None:
        """No more restarts; SIGTERM to the worker (it claims nothing more and starts its grace period)."""
        with self._lock:
            first = not self._stop.is_set()
            self._stop.set()
            process = self.process
        if first and process is not None and process.is_alive():
            log.info("stopping the worker (finishing its current job, up to %.0fs)", self.settings.shutdown_grace_s)
            process.terminate()

    def release_now(self) -> None:
        """Skip the rest of the grace period: the worker hands its job back to the queue now."""
        from .worker.shutdown import RELEASE_NOW_SIGNAL

        process = self.process
        if process is not None and process.is_alive() and process.pid is not None:
            log.info("stopping the worker now (its job goes back to the queue)")
            os.kill(process.pid, RELEASE_NOW_SIGNAL)

    def stop(self) -> None:
        """Stop the worker and wait for it: the grace period plus a margin, then SIGKILL."""
        self.begin_stop()
        with self._lock:  # a spawn in progress has finished: this is the last process there will be
            process = self.process
        if process is not None:
            process.join(self.settings.shutdown_grace_s + STOP_MARGIN_S)
            if process.is_alive():
                log.warning("worker still running %.0fs after the stop; killing it (its job will be requeued)",
                            self.settings.shutdown_grace_s + STOP_MARGIN_S)
                process.kill()
                process.join(5)
        if self._thread.is_alive():
            self._thread.join(5)


class Shutdown:
    """The order of a stop: refuse new work, stop the worker (claims nothing more from here on), wait for it,
    then let the HTTP server close. A second signal skips the rest of the grace period."""

    def __init__(self, supervisor: WorkerSupervisor | None) -> None:
        self.supervisor = supervisor
        self.draining = threading.Event()
        self.server: Any = None
        self._signals = 0

    def on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            if self.supervisor:
                self.supervisor.release_now()
            if self._signals > 2 and self.server is not None:
                self.server.force_exit = True
            return
        log.info("%s received: shutting down (new requests are refused)", signal.Signals(sig).name)
        self.draining.set()
        if self.supervisor is None:
            self.server.should_exit = True
            return
        self.supervisor.begin_stop()
        threading.Thread(target=self._finish, name="shutdown", daemon=True).start()

    def _finish(self) -> None:
        self.supervisor.stop()
        self.server.should_exit = True
