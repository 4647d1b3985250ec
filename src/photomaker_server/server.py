"""``photomaker serve``: the HTTP API in this process, the GPU worker in a spawned child it supervises.

The worker is *spawned* (not forked): CUDA cannot be used in a forked child, and a fresh interpreter keeps the
API process free of torch. If the worker dies (OOM, kill -9), the supervisor starts a new one; the job it was
running comes back when its lease expires. On shutdown the worker gets SIGTERM and a grace period to finish its
job; past that it is killed and the job is requeued by lease expiry.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

from .jobs.status import forget_exited
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("photomaker_server")
SHUTDOWN_GRACE_S = 30.0
RESTART_BACKOFF_S = (1, 2, 5, 10, 30)


class WorkerSupervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mp = multiprocessing.get_context("spawn")
        self.process: multiprocessing.process.BaseProcess | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.restarts = 0

    def _spawn(self) -> None:
        from .jobs.worker import run_worker

        self.process = self._mp.Process(target=run_worker, args=(self.settings,), name="photomaker-worker")
        self.process.start()
        log.info("worker process started (pid %s)", self.process.pid)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _watch(self) -> None:
        failures, started_at = 0, time.monotonic()
        while not self._stop.wait(0.5):
            if self.process is not None and not self.process.is_alive():
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                log.warning("worker process exited with code %s; restarting in %ss", self.process.exitcode, delay)
                forget_exited(self.settings.data_dir, self.process.pid)  # /ready: not ready until the new one is
                failures += 1
                if self._stop.wait(delay):
                    return
                self.restarts += 1
                self._spawn()
                started_at = time.monotonic()
            elif failures and time.monotonic() - started_at > 60:
                failures = 0  # it has stayed up: the next crash restarts quickly again

    def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self._stop.set()
        process = self.process
        if process is None or not process.is_alive():
            return
        log.info("stopping the worker (finishing its current job, up to %.0fs)", grace_s)
        process.terminate()  # SIGTERM: finish the job in hand, claim no more
        process.join(grace_s)
        if process.is_alive():
            log.warning("worker still busy after %.0fs; killing it (its job will be requeued)", grace_s)
            process.kill()
            process.join(5)


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
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _banner(settings: Settings, key_generated: bool, key: str | None, cert: Path | None) -> None:
    from .engine.demo import DEMO_WARNING

    lines = [f"PhotoMaker server on {settings.base_url}  (web page: {settings.base_url}/, API docs: {settings.base_url}/docs)"]
    if key_generated:  # printed once, when created; later starts only say where it is
        lines.append(f"API key (generated now, stored in {settings.data_dir / 'api-key'}): {key}")
    elif key:
        lines.append(f"API key: in {settings.data_dir / 'api-key'}")
    if cert is not None:
        lines.append(f"TLS certificate: {cert}  (clients: SSL_CERT_FILE={cert})")
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


def serve(settings: Settings, run_worker: bool = True) -> int:
    import uvicorn

    from .api.app import build_context, create_app

    configure_logging(settings.log_format, "api")
    settings = with_demo_fallback(settings)
    cert = key = None
    if settings.tls:
        cert, key = ensure_tls(settings)
    ctx = build_context(settings)
    _banner(settings, ctx.keys.created, ctx.keys.local_key, cert)
    supervisor = WorkerSupervisor(settings) if run_worker else None
    if supervisor:
        supervisor.start()
    try:
        uvicorn.run(
            create_app(ctx=ctx),
            host=settings.host,
            port=settings.port,
            ssl_certfile=str(cert) if cert else None,
            ssl_keyfile=str(key) if key else None,
            log_level="info",
            log_config=None,  # keep configure_logging's handlers (text or JSON)
            timeout_graceful_shutdown=5,
        )
    finally:
        if supervisor:
            supervisor.stop()
    return 0
