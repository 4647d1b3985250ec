"""``photomaker serve``: the HTTP API in this process, the GPU worker in a spawned child it supervises.

The worker is *spawned* (not forked): CUDA cannot be used in a forked child, and a fresh interpreter keeps the
API process free of torch. If the worker dies (OOM, kill -9), the supervisor starts a new one; the job it was
running comes back when its lease expires.

Shutdown (SIGTERM or SIGINT, to this process alone or to the whole group): first POSTs get 503 and ``/ready`` 503
(:mod:`.api.draining`), then the worker is told to stop, so it claims nothing more; it finishes its job within
``shutdown_grace_s`` or hands it back to the queue; only once it has exited does the HTTP server close its listener.
The worker never outlives this process: it dies with it (see :mod:`.worker.shutdown` and :mod:`.worker.main`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable
from types import FrameType
from typing import Any

from .logs import configure_logging
from .private_files import write_private
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


def ensure_tls(settings: Settings) -> tuple[Path, Path]:
    """The certificate and key to serve with: the operator's, or a self-signed pair made once in the data dir."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    directory = settings.data_dir / "tls"
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    host = settings.host
    if host not in ("0.0.0.0", "::", "localhost", "127.0.0.1", "::1", ""):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "photomaker-server (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(key_path, key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _banner(settings: Settings, key_generated: bool, key: str | None, cert: Path | None,
            login: str | None = None) -> None:
    from .engine.demo import DEMO_WARNING, INSIGHTFACE_LICENSE_NOTICE

    lines = [f"PhotoMaker server on {settings.base_url}  (web page: {settings.base_url}/, API docs: {settings.base_url}/docs)"]
    if key_generated:  # printed once, when created; later starts only say where it is
        lines.append(f"API key (generated now; kept in the job database, a copy in {settings.data_dir / 'api-key'}): {key}")
    elif key:
        lines.append(f"API key: in {settings.data_dir / 'api-key'}")
    if login:
        lines.append(f"Web page, signed in with the local key (one-time link, valid 24 h; `photomaker login-link` "
                     f"prints another): {login}")
    if cert is not None:
        lines.append(f"TLS certificate: {cert}  (clients: SSL_CERT_FILE={cert})")
    if settings.enable_v2:
        lines.append(f"PhotoMaker v2 enabled (default version: {settings.default_version}). {INSIGHTFACE_LICENSE_NOTICE}")
    if settings.tiny:
        bar = "!" * 100
        lines += [bar, "!! " + DEMO_WARNING, bar]
    print("\n".join(lines), file=sys.stderr, flush=True)


def with_demo_fallback(settings: Settings) -> Settings:
    """Real weights unreachable (offline, no local copy): start on the tiny model rather than not at all."""
    if settings.tiny:
        return settings
    from .engine.weights import unavailable_weights

    problems = unavailable_weights([settings.base_model, settings.style_base_model, settings.photomaker_checkpoint])
    if not problems:
        return settings
    if not settings.demo_fallback:
        raise SystemExit("real weights unavailable:\n  " + "\n  ".join(problems))
    log.warning("real weights unavailable (%s); FALLING BACK TO THE RANDOM-WEIGHT DEMO MODEL", "; ".join(problems))
    return settings.model_copy(update={"tiny": True})


def _uvicorn_server(config: Any, on_signal: Any) -> Any:
    """A uvicorn server whose SIGTERM/SIGINT go to ``on_signal`` instead of stopping it at once.

    uvicorn's own handler starts closing the listener immediately and, once done, re-raises the signal, which
    (SIGTERM's default action) ends this process before any cleanup: that is how workers used to be orphaned.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_signal(sig)

    return Server(config)


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


def serve(settings: Settings, run_worker: bool = True, api_processes: int = 1) -> int:
    """Run the API (and, with ``run_worker``, one supervised worker) until SIGTERM/SIGINT.

    ``api_processes`` > 1 (API replicas only): that many uvicorn processes share the port
    (:mod:`.api_processes`); the banner and a generated key are printed once, here.
    """
    import uvicorn

    from .api.app import build_context, create_app
    from .api.draining import DrainingMiddleware
    from .api.http_server import apply_deadlines, ensure_file_limit, uvicorn_options
    from .api.login import login_link
    from .worker.registry import forget_process

    configure_logging(settings.log_format, "api", log_probes=settings.log_probes)
    settings = with_demo_fallback(settings)
    cert = key = None
    if settings.tls:
        cert, key = ensure_tls(settings)
    if api_processes > 1 and run_worker:
        raise ValueError("several API processes need run_worker=False: the worker supervisor belongs to one process")
    ctx = build_context(settings)
    link = login_link(settings.base_url, ctx.token_secret, time.time()) if ctx.keys.local_key else None
    _banner(settings, ctx.keys.created, ctx.keys.local_key, cert, link)
    if api_processes > 1:
        from .api_processes import serve_api_processes

        ctx.wakeups.close()  # each child opens its own deployment; the parent keeps nothing open
        ctx.store.close()
        return serve_api_processes(settings, api_processes, cert, key)
    supervisor = WorkerSupervisor(settings, on_exit=lambda pid: forget_process(ctx.store, pid)) if run_worker else None
    shutdown = Shutdown(supervisor)
    config = uvicorn.Config(
        DrainingMiddleware(create_app(ctx=ctx), shutdown.draining),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert) if cert else None,
        ssl_keyfile=str(key) if key else None,
        log_level="info",
        log_config=None,  # keep configure_logging's handlers (text or JSON)
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    apply_deadlines(config, settings)
    ensure_file_limit(settings)
    shutdown.server = _uvicorn_server(config, shutdown.on_signal)
    # Until uvicorn installs its handlers (and again after it restores these), a signal still stops us in order.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: shutdown.on_signal(signum))
    if supervisor:
        supervisor.start()
    try:
        shutdown.server.run()
    finally:
        if supervisor:
            supervisor.stop()
    log.info("stopped")
    return 0
