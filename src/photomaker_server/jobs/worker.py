"""The GPU worker: claims jobs from the store, runs the engine, stores the outputs.

It runs in its own process (spawned by ``photomaker serve``, or ``photomaker worker`` on another machine sharing
the data dir), loads the model once and keeps it resident. While a job runs, a thread renews the job's lease and
picks up cancellation requests; if this process dies, the lease runs out and the job is run again elsewhere.
On SIGTERM/SIGINT it claims nothing more, gives the job in hand ``shutdown_grace_s`` to finish, and past that hands
it back to the queue at once (see :mod:`.shutdown`).
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import secrets
import signal
import socket
import threading
import time
import traceback
from typing import Any

from ..engine.options import GenerationOptions
from ..inputs.errors import InputError
from ..inputs.resolve import InputLoader
from ..logs import configure_logging
from ..outputs import EXTENSIONS, encode_image
from ..settings import Settings
from ..storage.local import LocalStorage
from .shutdown import StopRequest, install_stop_handlers, watch_parent
from .status import HEARTBEAT_S, WorkerStatus, remove_status, write_status
from .store import CANCELLED_ERROR, Job, SQLJobStore

log = logging.getLogger(__name__)
#: How often an idle worker looks for work; a cheap read (``has_work``), so it can be short.
IDLE_POLL_S = 0.05
#: How often a running job looks for a cancel request (a read; the lease is renewed less often).
CANCEL_POLL_S = 0.5
_OPTION_FIELDS = set(GenerationOptions.model_fields)


class JobRun:
    """One claimed job: logging into the store, lease renewal, and the cancel/lost flags the engine polls.

    Log lines go to the store from a writer thread, in order: a step's log line must never make the denoising
    loop wait for the database's write lock (an API busy with submits can hold it for a while).
    """

    def __init__(self, store: SQLJobStore, job: Job, worker_id: str, lease_s: float) -> None:
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


class Worker:
    def __init__(self, settings: Settings, engine: Any = None) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.store = SQLJobStore(settings.db_path)
        self.storage = LocalStorage(settings.files_dir, settings.base_url)
        self.inputs = InputLoader(settings, self.storage)
        self.status = WorkerStatus(self.worker_id, os.getpid(), demo_model=settings.tiny)
        self.engine = engine
        self.load_error: str | None = None
        self.shutdown = StopRequest(settings.shutdown_grace_s)
        #: Set once shutdown has begun: claim no new job (the one in hand may finish within the grace period).
        self.stop = self.shutdown.stopping

    # --- life cycle -----------------------------------------------------------------------------------------
    def load(self) -> None:
        from ..engine.service import Engine, EngineConfig

        self._set_state("loading", "loading the model")
        started = time.perf_counter()
        try:
            if self.engine is None:
                self.engine = Engine(EngineConfig.from_settings(self.settings))
            self.status.device = f"{self.engine.placement.device} ({str(self.engine.placement.dtype).removeprefix('torch.')})"
            self.engine.load_all()
            self.status.loaded_bases = self.engine.loaded_bases()
            detail = "random-weight demo model" if self.settings.tiny else "model loaded"
            self._set_state("ready", detail)
            log.info("worker %s ready: %s, model loaded in %.1f s", self.worker_id, self.status.device,
                     time.perf_counter() - started)
        except Exception as exc:  # weights missing, bad checkpoint, out of memory: jobs fail with this message
            self.load_error = f"The model could not be loaded: {exc}"
            log.error(self.load_error)
            self._set_state("error", self.load_error)

    def _set_state(self, state: str, detail: str) -> None:
        self.status.state, self.status.detail = state, detail
        write_status(self.settings.data_dir, self.status)

    def _heartbeat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                write_status(self.settings.data_dir, self.status)
            except OSError:
                log.exception("heartbeat failed")

    @property
    def loading(self) -> bool:
        """Still starting up: no job is held yet, so a stop may abort whatever is going on."""
        return self.status.state in ("starting", "loading")

    def run(self) -> None:
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        try:
            self.load()
            while not self.stop.is_set():
                try:
                    job = self.store.claim(self.worker_id, self.settings.lease_seconds) if self.store.has_work() else None
                    if job is None:
                        self.stop.wait(IDLE_POLL_S)
                        continue
                    if self.stop.is_set():  # the stop came while claiming: this job was never started
                        self._release(job)
                        break
                    self.process(job)
                except Exception:  # the database was busy or broke: keep the model loaded and try again
                    log.exception("store error; retrying in a second (an unfinished job returns when its lease expires)")
                    self.stop.wait(1.0)
        finally:
            self.stop.set()  # ends the heartbeat too
            remove_status(self.settings.data_dir, self.worker_id)
            self.store.close()
            log.info("worker %s stopped", self.worker_id)

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
            # Logged before the status flips: clients (and the SSE stream) stop reading logs at COMPLETED, so a
            # line written after it would be missed.
            run.log("Completed")
            run.flush()
            self.store.complete(job.id, self.worker_id, result, inference_time)

    def _generate(self, job: Job, run: JobRun) -> tuple[dict[str, Any], float]:
        from ..engine.errors import InvalidRequest
        from ..engine.service import GenerationRequest

        if self.load_error:
            raise _JobError(self.load_error, "runner_server_error")
        payload = job.input
        options = GenerationOptions.model_validate(
            {k: v for k, v in payload.items() if k in _OPTION_FIELDS},
            context={"trigger_word": self.settings.trigger_word, "max_num_images": self.settings.max_num_images},
        )
        photos, initial = self.inputs.load(payload, run.log)

        step_started = [time.perf_counter()]

        def on_step(i: int, n: int) -> None:
            now = time.perf_counter()
            self.status.steps_total += 1
            self.status.step_seconds_sum += now - step_started[0]
            step_started[0] = now
            run.log(f"Step {i}/{n}")

        started = time.perf_counter()
        try:
            result = self.engine.generate(
                GenerationRequest(options, photos, initial), on_log=run.log, on_step=on_step,
                should_cancel=lambda: run.should_stop() or self.shutdown.release_due(),
            )
        except InvalidRequest as exc:
            raise _JobError(str(exc), "input_error") from None
        inference_time = time.perf_counter() - started
        self.status.observe_inference(inference_time)
        self.status.loaded_bases = self.engine.loaded_bases()
        self.status.id_cache_hits, self.status.id_cache_misses = self.engine.id_cache.hits, self.engine.id_cache.misses

        run.log(f"Saving {len(result.images)} image{'s' if len(result.images) != 1 else ''}")
        output_format = payload.get("output_format", "png")
        images = [self._deliver(job, i, image, output_format, payload.get("sync_mode", False), result.demo_model)
                  for i, image in enumerate(result.images)]
        body: dict[str, Any] = {
            "images": images,
            "seed": result.seed,
            "prompt": result.prompt,
            "timings": {**result.timings, "inference": round(inference_time, 4)},
            "demo_model": result.demo_model,
        }
        if result.demo_model:
            from ..engine.demo import DEMO_WARNING

            body["demo_warning"] = DEMO_WARNING
        return body, round(inference_time, 4)

    def _deliver(self, job: Job, index: int, image, output_format: str, sync_mode: bool, demo: bool) -> dict:  # noqa: ANN001
        from ..engine.demo import DEMO_WARNING

        data, content_type = encode_image(image, output_format, DEMO_WARNING if demo else None)
        file_name = f"{job.id}-{index}.{EXTENSIONS[output_format]}"
        if sync_mode:
            url = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        else:
            url = self.storage.put(data, content_type, file_name).url
        return {"url": url, "content_type": content_type, "file_name": file_name, "file_size": len(data),
                "width": image.width, "height": image.height}

    def _fail(self, job: Job, run: JobRun, exc: Exception) -> None:
        from ..engine.checkpoint import CheckpointError
        from ..engine.errors import GenerationCancelled, WeightsUnavailable

        if run.lease_lost.is_set():
            log.warning("lost the lease on %s; another worker will run it", job.id)
            return
        if isinstance(exc, GenerationCancelled) and not run.cancelled.is_set() and self.shutdown.release_due():
            run.flush()
            self._release(job)
            return
        if isinstance(exc, GenerationCancelled):
            message, error_type = CANCELLED_ERROR, "client_cancelled"
        elif isinstance(exc, _JobError):
            message, error_type = str(exc), exc.error_type
        elif isinstance(exc, InputError):
            message, error_type = str(exc), "input_error"
        elif isinstance(exc, (WeightsUnavailable, CheckpointError)):
            message, error_type = f"The model could not be loaded: {exc}", "weights_unavailable"
        else:
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            message, error_type = f"Internal error while generating ({type(exc).__name__}: {exc})", "runner_server_error"
        run.log(message, "ERROR")
        run.flush()
        self.store.fail(job.id, self.worker_id, message, error_type)


class _JobError(Exception):
    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def run_worker(settings: Settings, parent_pid: int | None = None) -> None:
    """Process entry point: ``photomaker worker``, or (with ``parent_pid``) the worker ``photomaker serve`` spawns.

    SIGTERM/SIGINT: claim nothing more, finish the job in hand within ``shutdown_grace_s`` or hand it back to the
    queue, then return. With ``parent_pid``, the death of that process stops the worker at once (job handed back).
    """
    configure_logging(settings.log_format, "worker")
    worker = Worker(settings)
    install_stop_handlers(worker.shutdown, parent_pid=parent_pid, interrupt_now=lambda: worker.loading)
    if parent_pid is not None:
        def orphaned() -> None:
            log.warning("the server process (pid %s) is gone; stopping this worker now", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)  # the signal handler decides, in the main thread

        watch_parent(parent_pid, orphaned)
    worker.run()
