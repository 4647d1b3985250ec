"""The GPU worker: claims jobs from the job database, runs the engine, stores the outputs.

It runs in its own process (spawned by ``photomaker serve``, or ``photomaker worker`` on any machine that reaches
the job database and the file storage), loads the model once and keeps it resident. It sleeps until a ``work``
wake-up (LISTEN/NOTIFY on PostgreSQL), writes its state and counters to the worker registry every few seconds, and
while a job runs a thread renews the job's lease and picks up cancellation requests; if this process dies, the
lease runs out and the job is run again elsewhere.
On SIGTERM/SIGINT it claims nothing more, gives the job in hand ``shutdown_grace_s`` to finish, and past that hands
it back to the queue at once (see :mod:`.shutdown`).
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PIL.Image import Image

from ..deployment import open_deployment
from ..contract.errors import ErrorType
from ..contract.files import FileRef
from ..contract.result import StoredImage, StoredOutput
from ..contract.stored import StoredRequest
from ..contract.notices import DEMO_WARNING
from ..inputs.errors import InputError
from ..inputs.resolve import InputLoader, NamedPhoto
from ..jobs.records import CANCELLED_ERROR, Job, JobStatus, StoreUnavailable, WorkerInfo
from ..logs import configure_logging
from ..outputs import EXTENSIONS, encode_image
from ..settings import Settings
from ..storage.base import StorageUnavailable
from .job_run import JobRun
from ..jobs.worker_registry import HEARTBEAT_S, WorkerCounters
from .shutdown import StopRequest, install_stop_handlers, watch_parent

log = logging.getLogger(__name__)
#: An idle worker sleeps until a ``work`` wake-up (a submit, a requeue). Wake-ups are best-effort, so it also looks
#: at the queue after this long; and it checks for a stop request this often while it waits.
IDLE_RECHECK_S = 2.0
STOP_CHECK_S = 0.2
#: A registry change (the job in hand) is written this long after it happened, together with any that follow.
REGISTRY_DEBOUNCE_S = 0.05
#: While the job database is unreachable, how often a finished job's outcome is offered again.
FINISH_RETRY_S = 0.5


class Worker:
    def __init__(self, settings: Settings, engine: Any = None) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.deployment = open_deployment(settings)
        self.store, self.storage = self.deployment.store, self.deployment.storage
        self.inputs = InputLoader(settings, self.storage)
        self.info = WorkerInfo(self.worker_id, socket.gethostname(), os.getpid(), demo_model=settings.tiny,
                               started_at=time.time())
        self.counters = WorkerCounters()
        self.engine = engine
        self.load_error: str | None = None
        self.shutdown = StopRequest(settings.shutdown_grace_s)
        #: Set once shutdown has begun: claim no new job (the one in hand may finish within the grace period).
        self.stop = self.shutdown.stopping
        #: Set when ``run`` returns: the heartbeat runs until then (a stopping worker may still hold a job).
        self._exited = threading.Event()
        #: Set to make the heartbeat thread write the registry entry now rather than at its next beat.
        self._beat_now = threading.Event()

    # --- life cycle -----------------------------------------------------------------------------------------
    def load(self) -> None:
        from ..engine.service import Engine, EngineConfig

        self._update(state="loading", detail="loading the model")
        started = time.perf_counter()
        try:
            if self.engine is None:
                self.engine = Engine(EngineConfig.from_settings(self.settings))
            device = f"{self.engine.placement.device} ({str(self.engine.placement.dtype).removeprefix('torch.')})"
            self._update(device=device)
            self.engine.load_all(version=self.settings.default_version)
            detail = "random-weight demo model" if self.settings.tiny else "model loaded"
            self._update(state="ready", detail=detail, loaded_bases=self.engine.loaded_bases())
            log.info("worker %s ready: %s, model loaded in %.1f s", self.worker_id, device,
                     time.perf_counter() - started)
        except Exception as exc:  # weights missing, bad checkpoint, out of memory: jobs fail with this message
            self.load_error = f"The model could not be loaded: {exc}"
            log.error(self.load_error)
            self._update(state="error", detail=self.load_error)

    def _update(self, **changes: Any) -> None:
        """Change this worker's registry entry and publish it at once (state changes should not wait for the
        next heartbeat: ``/ready`` turns on with ``ready``)."""
        self.info = replace(self.info, **changes)
        self._beat()

    def _update_soon(self, **changes: Any) -> None:
        """:meth:`_update` from the heartbeat thread, within milliseconds: for changes on a job's critical path
        (the job in hand), whose registry write must not delay the job's start or the next claim."""
        self.info = replace(self.info, **changes)
        self._beat_now.set()

    def _beat(self) -> None:
        if self.stop.is_set() and self.info.state == "ready":
            self.info = replace(self.info, state="stopping", detail="stopping: finishing or handing back its job")
        self.counters.database_reconnects = self.store.health.reconnects
        try:
            self.store.heartbeat(replace(self.info, stats=self.counters.as_dict()))
        except StoreUnavailable:  # the outage is logged once by the store; the next beat retries
            pass
        except Exception:  # noqa: BLE001 - the registry tolerates gaps
            log.exception("heartbeat failed")

    def _heartbeat(self) -> None:
        while not self._exited.is_set():
            if self._beat_now.wait(HEARTBEAT_S):
                # Changes come in bursts (a job's start, then its end a moment later for a short job): gather
                # them, and keep this write off the moments a job starts and ends, when every core counts.
                self._exited.wait(REGISTRY_DEBOUNCE_S)
            self._beat_now.clear()  # before the write: a change made during it is written by the next round
            if not self._exited.is_set():
                self._beat()

    @property
    def loading(self) -> bool:
        """Still starting up: no job is held yet, so a stop may abort whatever is going on."""
        return self.info.state in ("starting", "loading")

    def run(self) -> None:
        heartbeat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        heartbeat.start()
        # Back from an outage: say so in the registry now (``/ready``), not at the next beat.
        self.store.health.on_reconnect(self._beat_now.set)
        try:
            with self.deployment.wakeups.subscribe("work") as work:  # before the first look: no submit is missed
                self.load()
                woken = False
                while not self.stop.is_set():
                    try:
                        # After a `work` wake-up a job is almost surely there: claim at once. Otherwise look first
                        # with a read (on SQLite a claim takes the database's write lock, even when it finds nothing).
                        runnable = woken or self.store.has_work()
                        job = self.store.claim(self.worker_id, self.settings.lease_seconds) if runnable else None
                        if job is None:
                            woken = self._idle(work)
                            continue
                        woken = False
                        if self.stop.is_set():  # the stop came while claiming: this job was never started
                            self._release(job)
                            break
                        self._update_soon(current_job=job.id)
                        try:
                            self.process(job)
                        finally:
                            self._update_soon(current_job=None)
                    except StoreUnavailable:  # logged once per outage by the store: keep the model, try again
                        self.stop.wait(1.0)
                    except Exception:  # the database broke otherwise: keep the model loaded and try again
                        log.exception("store error; retrying in a second (an unfinished job returns when its lease expires)")
                        self.stop.wait(1.0)
        finally:
            self.stop.set()
            self._exited.set()
            self._beat_now.set()  # the heartbeat thread ends now rather than at its next beat
            heartbeat.join(timeout=10)  # a beat in flight must not write the entry back after its removal
            try:
                self.store.remove_worker(self.worker_id)
            except Exception:  # the database is gone: the entry goes stale and drops out of /health by itself
                log.warning("could not remove %s from the worker registry", self.worker_id)
            self.deployment.close()
            log.info("worker %s stopped", self.worker_id)

    def _idle(self, work) -> bool:  # noqa: ANN001 (a wakeups Subscription)
        """Sleep until a ``work`` wake-up (True), a stop request, or ``IDLE_RECHECK_S`` (wake-ups are best-effort)."""
        deadline = time.monotonic() + IDLE_RECHECK_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            if work.wait(STOP_CHECK_S):
                return True
        return False

    def _release(self, job: Job) -> None:
        if self.store.release(job.id, self.worker_id):
            log.info("handed %s back to the queue (worker stopping)", job.id)

    # --- one job --------------------------------------------------------------------------------------------
    def process(self, job: Job) -> None:
        with JobRun(self.store, job, self.worker_id, self.settings.lease_seconds) as run:
            attempt = f" (attempt {job.attempts} of {job.max_attempts})" if job.attempts > 1 else ""
            run.log(f"Started on worker {self.worker_id}{attempt}")
            if self.settings.tiny:
                run.log("This server runs the random-weight demo model: images are noise and resemble no one", "WARN")
            try:
                result, inference_time = self._generate(job, run)
            except Exception as exc:  # noqa: BLE001 — every failure becomes a COMPLETED-with-error, never a crash
                self._fail(job, run, exc)
                return
            if run.lease_lost.is_set():
                return
            # Every line is stored by the time the status flips: clients (and the SSE stream) stop reading logs at
            # COMPLETED, so a line written after it would be missed. Those not yet written, and the last one, go in
            # the completing transaction.
            pending = run.take_pending()
            self._finish(job, run, "result", lambda: self.store.complete(
                job.id, self.worker_id, result, inference_time, last_log="Completed", logs=pending))

    def _finish(self, job: Job, run: JobRun, what: str, finish: Callable[[], bool]) -> None:
        """Store the job's outcome (``finish()``: complete or fail); while the database is unreachable, keep the
        outcome and try again, since the lease is kept through the outage and renewed as soon as it is back. A
        worker that lost its lease meanwhile discards the outcome (fencing: the job is another worker's now)."""
        run.ending()
        cut_off = False  # a try failed in flight: it may have committed all the same
        while True:
            try:
                if finish():
                    return
                break
            except StoreUnavailable:
                if run.lease_lost.is_set():
                    break
                cut_off = True
                time.sleep(FINISH_RETRY_S)
        if cut_off and not run.lease_lost.is_set():
            current = self._read_quietly(job.id)
            if current is not None and current.status == JobStatus.COMPLETED:
                return  # stored by the try whose answer the outage cut off
        run.fence(f"its {what} could not be stored")
        log.warning("job %s: %s discarded (another worker runs the job)", job.id, what)

    def _read_quietly(self, job_id: str) -> Job | None:
        try:
            return self.store.get(job_id, with_input=False)
        except StoreUnavailable:
            return None

    def _generate(self, job: Job, run: JobRun) -> tuple[StoredOutput, float]:
        from ..engine.errors import InvalidRequest
        from ..engine.service import GenerationRequest

        if self.load_error:
            raise _JobError(self.load_error, ErrorType.RUNNER_SERVER_ERROR)
        inputs_started = time.perf_counter()
        request, named, initial = self.job_inputs(job, run.log)
        photos, names = [image for _, image in named], [name for name, _ in named]
        inputs_time = time.perf_counter() - inputs_started

        step_started = [time.perf_counter()]

        def on_step(i: int, n: int) -> None:
            now = time.perf_counter()
            self.counters.observe_step(now - step_started[0])
            step_started[0] = now
            run.log(f"Step {i}/{n}")

        started = time.perf_counter()
        try:
            result = self.engine.generate(
                GenerationRequest(request, photos, initial, id_image_names=names),
                on_log=run.log, on_step=on_step,
                should_cancel=lambda: run.should_stop() or self.shutdown.release_due(),
            )
        except InvalidRequest as exc:
            raise _JobError(str(exc), exc.error_type) from None
        inference_time = time.perf_counter() - started
        self.counters.observe_inference(inference_time)
        run.hold_lines()  # what is logged from here on is stored with the job's result
        self.counters.id_cache_hits, self.counters.id_cache_misses = self.engine.id_cache.hits, self.engine.id_cache.misses
        self.info = replace(self.info, loaded_bases=self.engine.loaded_bases())

        images = [self._deliver(job, i, image, request, result.demo_model) for i, image in enumerate(result.images)]
        output = StoredOutput(
            images=images,
            seed=result.seed,
            prompt=result.prompt,
            timings={**result.timings, "inputs": round(inputs_time, 4), "inference": round(inference_time, 4)},
            demo_model=result.demo_model,
            demo_warning=DEMO_WARNING if result.demo_model else None,
        )
        return output, round(inference_time, 4)

    def job_inputs(self, job: Job, log: Callable[..., None]) -> tuple[StoredRequest, list[NamedPhoto], Image | None]:
        """A claimed job → (its request, its ID photos with their names, its initial image or None): the one step
        between the job store and the engine. The request was validated at submit and is read as stored (no
        deployment rule is applied again); its files are storage keys, read from storage, or outside URLs,
        fetched."""
        request = job.input
        if request is None:  # a claim always loads the input; a job read without it cannot be run
            raise _JobError("The stored request was not loaded", ErrorType.INTERNAL_ERROR)
        named, initial = self.inputs.load_named(request, log)
        return request, named, initial

    def _deliver(self, job: Job, index: int, image, request: StoredRequest, demo: bool) -> StoredImage:  # noqa: ANN001
        data, content_type = encode_image(image, request.output_format, DEMO_WARNING if demo else None)
        file_name = f"{job.id}-{index}.{EXTENSIONS[request.output_format]}"
        # A stored image is kept by its storage key; the API renders its URL when it answers (results outlive
        # public-URL, CDN and presigning changes, and the worker never needs the API's address).
        if request.sync_mode:
            ref = FileRef.outside(f"data:{content_type};base64,{base64.b64encode(data).decode()}")
        else:
            ref = FileRef.stored(self.storage.put(data, content_type, file_name).key)
        return StoredImage(file=ref, content_type=content_type, file_name=file_name, file_size=len(data),
                           width=image.width, height=image.height)

    def _fail(self, job: Job, run: JobRun, exc: Exception) -> None:
        from ..engine.checkpoint import CheckpointError
        from ..engine.errors import GenerationCancelled, WeightsUnavailable

        if run.lease_lost.is_set():  # fenced: said by the run, and nothing more is written for this job
            return
        if isinstance(exc, GenerationCancelled) and not run.cancelled.is_set() and self.shutdown.release_due():
            run.flush()
            run.ending()
            self._release(job)
            return
        if isinstance(exc, GenerationCancelled):
            message, error_type = CANCELLED_ERROR, ErrorType.CLIENT_CANCELLED
        elif isinstance(exc, _JobError):
            message, error_type = str(exc), exc.error_type
        elif isinstance(exc, InputError):
            message, error_type = str(exc), ErrorType.INPUT_ERROR
        elif isinstance(exc, (WeightsUnavailable, CheckpointError)):
            message, error_type = f"The model could not be loaded: {exc}", ErrorType.WEIGHTS_UNAVAILABLE
        elif isinstance(exc, StorageUnavailable):
            message, error_type = str(exc), ErrorType.RUNNER_SERVER_ERROR
        else:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            message, error_type = f"Internal error while generating ({type(exc).__name__}: {exc})", ErrorType.RUNNER_SERVER_ERROR
        run.log(message, "ERROR")
        run.flush()
        self._finish(job, run, "error", lambda: self.store.fail(job.id, self.worker_id, message, error_type))


class _JobError(Exception):
    def __init__(self, message: str, error_type: ErrorType) -> None:
        super().__init__(message)
        self.error_type = error_type


#: Waits between tries when the job database cannot be reached at start-up.
START_BACKOFF_S = (1, 2, 5, 10, 30)


def _open_worker(settings: Settings) -> Worker:
    """A worker on the deployment; while the job database is unreachable (restarting, not up yet), try again
    with backoff rather than exit: a supervisor restarting us in a loop would gain nothing."""
    for attempt in itertools.count():
        try:
            return Worker(settings)
        except StoreUnavailable as exc:
            delay = START_BACKOFF_S[min(attempt, len(START_BACKOFF_S) - 1)]
            log.warning("job database unreachable (%s); trying again in %ss", exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def run_worker(settings: Settings, parent_pid: int | None = None) -> None:
    """Process entry point: ``photomaker worker``, or (with ``parent_pid``) the worker ``photomaker serve`` spawns.

    SIGTERM/SIGINT: claim nothing more, finish the job in hand within ``shutdown_grace_s`` or hand it back to the
    queue, then return. With ``parent_pid``, the death of that process stops the worker at once (job handed back).
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
