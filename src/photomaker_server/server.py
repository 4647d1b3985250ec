"""``photomaker serve``: the HTTP API in this process, the GPU worker in a spawned child it supervises.

The worker is *spawned* (not forked): CUDA cannot be used in a forked child, and a fresh interpreter keeps the
API process free of torch. If the worker dies (OOM, kill -9), the supervisor starts a new one; the job it was
running comes back when its lease expires.

Shutdown (SIGTERM or SIGINT, to this process alone or to the whole group): first POSTs get 503 and ``/ready`` 503
(:mod:`.api.draining`), then the worker is told to stop, so it claims nothing more; it finishes its job within
``shutdown_grace_s`` or hands it back to the queue; only once it has exited does the HTTP server close its listener.
The worker never outlives this process: it dies with it (see :mod:`.worker.shutdown` and :mod:`.worker.main`).
The supervision itself (the worker child's restarts, the order of a stop) is :mod:`.supervision`; this module
wires it to uvicorn.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .logs import configure_logging
from .private_files import write_private
from .settings import Settings
from .supervision import Shutdown, WorkerSupervisor

log = logging.getLogger("photomaker_server")


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
    from .contract.notices import DEMO_WARNING, INSIGHTFACE_LICENSE_NOTICE

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
    from .jobs.worker_registry import forget_process

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
