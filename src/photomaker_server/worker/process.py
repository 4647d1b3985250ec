"""The GPU worker: claims jobs from the job database, runs the engine, stores the outputs.

It runs in its own process (spawned by ``photomaker serve``, or ``photomaker worker`` on any machine that reaches
the job database and the file storage; the process is put together in :mod:`.main`), loads the model once and
keeps it resident. It sleeps until a ``work`` wake-up (LISTEN/NOTIFY on PostgreSQL), writes its state and counters
to the worker registry every few seconds, and while a job is held a thread renews the job's lease and picks up
cancellation requests; if this process dies, the lease runs out and the job is run again elsewhere.
While a job is on the device, the next one is claimed and its inputs read (``prefetch_depth``, :mod:`.feed`).
On SIGTERM/SIGINT it claims nothing more, hands a prefetched job back at once, gives the job on the device
``shutdown_grace_s`` to finish, and past that hands it back to the queue too (see :mod:`.shutdown`).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..contract.errors import ErrorType
from ..contract.files import FileRef
from ..contract.notices import DEMO_WARNING
from ..contract.result import StoredImage, StoredOutput
from ..contract.stored import StoredRequest
from ..deployment import open_deployment
from ..inputs.errors import InputError
from ..inputs.resolve import InputLoader
from ..jobs.records import (
    CANCELLED_ERROR, REQUEST_TIMEOUT_ERROR, Job, JobStatus, LeaseLost, StoreUnavailable,
    WorkerInfo,
)
from ..outputs import EXTENSIONS, encode_image
from ..settings import Settings
from ..storage.base import StorageUnavailable
from .feed import Claimed, ClaimLoop, InlineFeed, PrefetchFeed
from .finisher import Finisher
from .job_inputs import JobError, LoadedJob, load_job_inputs
from .job_run import JobRun
from ..jobs.worker_registry import HEARTBEAT_S, WorkerCounters
from .shutdown import StopRequest

log = logging.getLogger(__name__)
#: A registry change (the job in hand) is written this long after it happened, together with any that follow.
REGISTRY_DEBOUNCE_S = 0.05
#: While the job database is unreachable, how often a finished job's outcome is offered again.
FINISH_RETRY_S = 0.5
#: A stopping worker waits at most this long for a prefetched job's log lines before handing it back.
HAND_BACK_FLUSH_S = 2.0


@dataclass
class Inference:
    """A job's inference, done: what remains is storing its images and completing it."""

    result: Any  # engine.service.GenerationResult (the engine, and torch, are imported once the worker loads it)
    seconds: float
    loaded: LoadedJob


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
        #: Stores finished jobs' outcomes while the device runs the next job (with prefetching; else inline).
        self.finisher: Finisher | None = None
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
        feed: InlineFeed | PrefetchFeed | None = None
        try:
            with self.deployment.wakeups.subscribe("work") as work:  # before the first look: no submit is missed
                self.load()
                claims = ClaimLoop(self, work)
                depth = self.settings.prefetch_depth
                feed = PrefetchFeed(self, claims, depth) if depth > 0 else InlineFeed(self, claims)
                self.finisher = Finisher() if depth > 0 else None
                while not self.stop.is_set():
                    try:
                        claimed = feed.next()
                        if claimed is None:
                            continue
                        if self.stop.is_set():  # the stop came while it was on its way: it never started
                            self.hand_back(claimed)
                            break
                        self._update_soon(current_job=claimed.job.id)
                        try:
                            self.run_claimed(claimed)
                        finally:
                            self._update_soon(current_job=None)
                    except StoreUnavailable:  # logged once per outage by the store: keep the model, try again
                        self.stop.wait(1.0)
                    except Exception:  # the database broke otherwise: keep the model loaded and try again
                        log.exception("store error; retrying in a second (an unfinished job returns when its lease expires)")
                        self.stop.wait(1.0)
        finally:
            self.stop.set()
            if feed is not None:
                feed.close()  # prefetched jobs go back to the queue
            if self.finisher is not None:
                self.finisher.close()  # the outcomes of jobs already run are stored
            self._exited.set()
            self._beat_now.set()  # the heartbeat thread ends now rather than at its next beat
            heartbeat.join(timeout=10)  # a beat in flight must not write the entry back after its removal
            try:
                self.store.remove_worker(self.worker_id)
            except Exception:  # the database is gone: the entry goes stale and drops out of /health by itself
                log.warning("could not remove %s from the worker registry", self.worker_id)
            self.deployment.close()
            log.info("worker %s stopped", self.worker_id)

    # --- a job's way to the device (called by the feed, perhaps from its prefetch thread) --------------------
    def claim(self) -> Job | None:
        return self.store.claim(self.worker_id, self.settings.lease_seconds)

    def release(self, job: Job) -> None:
        """Hand a job back to the queue (this worker is stopping); its attempt does not count."""
        if self.store.release(job.id, self.worker_id):
            log.info("handed %s back to the queue (worker stopping)", job.id)

    def begin(self, job: Job, *, ahead: bool = False) -> Claimed:
        """Start a claimed job's run: from here its lease is renewed and its cancellation watched. ``ahead``: claimed
        while the device runs another job; its log says it started only when it reaches the device."""
        run = JobRun(self.store, job, self.worker_id, self.settings.lease_seconds).__enter__()
        if ahead:
            run.log(f"Claimed by worker {self.worker_id}{_attempt(job)}: its inputs are read while the device "
                    "finishes another request")
        else:
            run.log(f"Started on worker {self.worker_id}{_attempt(job)}")
        if self.settings.tiny:
            run.log("This server runs the random-weight demo model: images are noise and resemble no one", "WARN")
        return Claimed(job, run, ahead=ahead)

    def read_inputs(self, claimed: Claimed) -> None:
        """Read the job's request and inputs (the CPU half of a job); a failure is kept for :meth:`settle`."""
        try:
            if self.load_error:
                raise JobError(self.load_error, ErrorType.RUNNER_SERVER_ERROR)
            claimed.loaded = load_job_inputs(claimed.job, self.settings, self.inputs, claimed.run.log)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a COMPLETED-with-error, never a crash
            claimed.error = exc

    def must_not_run(self, claimed: Claimed, *, waiting: bool) -> bool:
        return self._why_not_run(claimed, waiting=waiting) is not None

    def _why_not_run(self, claimed: Claimed, *, waiting: bool) -> Exception | None:
        """Why a claimed job must not reach the device (None: it may). ``waiting``: it is ready and waits for the
        device, so its start deadline counts as if it were still queued."""
        from ..engine.errors import GenerationCancelled

        run, job = claimed.run, claimed.job
        if run.lease_lost.is_set():
            return LeaseLost(job.id)
        if claimed.error is not None:
            return claimed.error
        if run.cancelled.is_set():
            return GenerationCancelled("cancelled before it started")
        if waiting and job.start_deadline is not None and self.store.now() > job.start_deadline:
            return JobError(REQUEST_TIMEOUT_ERROR, ErrorType.REQUEST_TIMEOUT)
        return None

    def settle(self, claimed: Claimed, *, waiting: bool) -> None:
        """Finish a job that must not reach the device (see :meth:`_why_not_run`) and close its run."""
        try:
            why = self._why_not_run(claimed, waiting=waiting)
            if why is not None and not isinstance(why, LeaseLost):  # fenced: nothing more is written for it
                self._fail(claimed.job, claimed.run, why)
        finally:
            claimed.run.__exit__(None, None, None)

    def hand_back(self, claimed: Claimed) -> None:
        """Give a claimed job that has not reached the device back to the queue at once (the worker is stopping)."""
        run = claimed.run
        try:
            if not run.lease_lost.is_set():
                run.flush(timeout=HAND_BACK_FLUSH_S)  # its lines so far, before the line saying it went back
                run.ending()
                try:
                    self.release(claimed.job)
                except Exception:  # noqa: BLE001 - the database is away: the lease runs out, and the job returns
                    log.warning("could not hand %s back to the queue; it returns when its lease expires", claimed.job.id)
                run.handed_back()
        finally:
            run.__exit__(None, None, None)

    # --- one job --------------------------------------------------------------------------------------------
    def process(self, job: Job) -> None:
        """Run a job claimed by this worker, from its inputs to its outcome."""
        claimed = self.begin(job)
        self.read_inputs(claimed)
        self.run_claimed(claimed)

    def run_claimed(self, claimed: Claimed) -> None:
        """The device half of a job (its inputs are read): inference; then its outputs are stored and the job
        completed, on the finisher thread when there is one (the device goes on with the next job meanwhile)."""
        job, run = claimed.job, claimed.run
        if self.must_not_run(claimed, waiting=False):
            self.settle(claimed, waiting=False)
            return
        if claimed.ahead:
            run.log(f"Started on worker {self.worker_id}{_attempt(job)}")
        try:
            assert claimed.loaded is not None
            done = self._generate(job, run, claimed.loaded)
        except Exception as exc:  # noqa: BLE001 — every failure becomes a COMPLETED-with-error, never a crash
            try:
                self._fail(job, run, exc)
            finally:
                run.__exit__(None, None, None)
            return
        if self.finisher is not None:
            self.finisher.submit(lambda: self._complete(claimed, done))
        else:
            self._complete(claimed, done)

    def _complete(self, claimed: Claimed, done: Inference) -> None:
        """Store a job's images and complete it (or fail it, when its images cannot be stored)."""
        job, run = claimed.job, claimed.run
        try:
            if run.lease_lost.is_set():
                return
            try:
                result = self._store_outputs(job, done)
            except Exception as exc:  # noqa: BLE001 - e.g. the file storage is unreachable
                self._fail(job, run, exc)
                return
            # Every line is stored by the time the status flips: clients (and the SSE stream) stop reading logs at
            # COMPLETED, so a line written after it would be missed. Those not yet written, and the last one, go in
            # the completing transaction.
            pending = run.take_pending()
            self._finish(job, run, "result", lambda: self.store.complete(
                job.id, self.worker_id, result, round(done.seconds, 4), last_log="Completed", logs=pending))
        finally:
            run.__exit__(None, None, None)

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

    def _generate(self, job: Job, run: JobRun, loaded: LoadedJob) -> Inference:
        from ..engine.errors import InvalidRequest
        from ..engine.service import GenerationRequest

        request = loaded.request
        # Step times start with denoising: prompt and ID encoding (and the base model's load) are not a step's.
        step_started: list[float | None] = [None]

        def on_denoise_start() -> None:
            step_started[0] = time.perf_counter()

        def on_step(i: int, n: int) -> None:
            now = time.perf_counter()
            if step_started[0] is not None:
                self.counters.observe_step(now - step_started[0])
            step_started[0] = now
            run.log(f"Step {i}/{n}")

        started = time.perf_counter()
        try:
            result = self.engine.generate(
                GenerationRequest(request, loaded.photos, loaded.initial, id_image_names=loaded.names),
                on_log=run.log, on_step=on_step, on_denoise_start=on_denoise_start,
                should_cancel=lambda: run.should_stop() or self.shutdown.release_due(),
            )
        except InvalidRequest as exc:
            raise JobError(str(exc), exc.error_type) from None
        inference_time = time.perf_counter() - started
        self.counters.observe_inference(inference_time)
        run.hold_lines()  # what is logged from here on is stored with the job's result
        self.counters.id_cache_hits, self.counters.id_cache_misses = self.engine.id_cache.hits, self.engine.id_cache.misses
        self.info = replace(self.info, loaded_bases=self.engine.loaded_bases())
        return Inference(result, inference_time, loaded)

    def _store_outputs(self, job: Job, done: Inference) -> StoredOutput:
        result, request = done.result, done.loaded.request
        images = [self._deliver(job, i, image, request, result.demo_model) for i, image in enumerate(result.images)]
        return StoredOutput(
            images=images,
            seed=result.seed,
            prompt=result.prompt,
            timings={**result.timings, "inputs": round(done.loaded.seconds, 4), "inference": round(done.seconds, 4)},
            demo_model=result.demo_model,
            demo_warning=DEMO_WARNING if result.demo_model else None,
        )

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
            self.release(job)
            return
        if isinstance(exc, GenerationCancelled):
            message, error_type = CANCELLED_ERROR, ErrorType.CLIENT_CANCELLED
        elif isinstance(exc, JobError):
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


def _attempt(job: Job) -> str:
    return f" (attempt {job.attempts} of {job.max_attempts})" if job.attempts > 1 else ""
