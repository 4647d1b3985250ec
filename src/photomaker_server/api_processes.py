"""``photomaker serve --no-worker --api-processes K``: one API replica as K uvicorn processes on one port.

An API replica keeps no state of its own (jobs, secrets, the worker registry and wake-ups live in the job database,
files in the storage), so K processes of one replica are K replicas sharing a listening socket: uvicorn's
multi-process supervisor binds the port once and spawns K fresh interpreters that each build their own app with
:func:`photomaker_server.api.app.app_from_env`.

The children get their settings the way every other process of a deployment does, from ``PHOTOMAKER_*``
variables: :func:`settings_environment` turns the parent's effective settings (flags included, and the demo
fallback's decision) into those variables. Secrets travel too: the environment is private to this process tree.

Only without the worker: the worker supervisor belongs to exactly one process (see :mod:`.server`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import SecretStr

from .settings import Settings

log = logging.getLogger("photomaker_server")

#: uvicorn's import string of the children's app factory.
APP_FACTORY = "photomaker_server.api.app:app_from_env"


def settings_environment(settings: Settings) -> dict[str, str]:
    """``PHOTOMAKER_*`` variables that rebuild ``settings`` in a child: every field that was set (by a flag, the
    environment, or the demo fallback). Unset fields are left to the defaults (or to the inherited environment,
    which gave them no value here either)."""
    env: dict[str, str] = {}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):  # comma-separated, as PHOTOMAKER_API_KEYS / PHOTOMAKER_FETCH_ALLOW are read
            if any("," in str(item) for item in value):
                raise ValueError(f"{name}: a value containing ',' cannot be passed to the API processes")
            text = ",".join(str(item) for item in value)
        else:  # str, int, float, Path
            text = str(value)
        env[f"PHOTOMAKER_{name.upper()}"] = text
    return env


def serve_api_processes(settings: Settings, processes: int, cert: Path | None, key: Path | None) -> int:
    """Bind the port once and run ``processes`` uvicorn children until SIGTERM/SIGINT, which stops them all
    (each closes its listener and finishes its requests, up to uvicorn's graceful timeout). Returns 1 when a child
    could not start (its log says why), else 0."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from .api.http_server import apply_deadlines, ensure_file_limit, uvicorn_options

    os.environ.update(settings_environment(settings))
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        workers=processes,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert) if cert else None,
        ssl_keyfile=str(key) if key else None,
        log_level="info",
        log_config=None,  # the children call configure_logging themselves
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),
    )
    apply_deadlines(config, settings)  # travels to the children with the config
    ensure_file_limit(settings)
    sock = config.bind_socket()
    log.info("serving with %d API processes", processes)
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    log.info("stopped")
    return 1 if failed else 0
