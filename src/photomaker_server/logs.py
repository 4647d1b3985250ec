"""Process-wide logging: readable lines for people, or one JSON object per line for log collectors.

``PHOTOMAKER_LOG_FORMAT=json`` (or ``--log-format json``) switches every process (API and worker) to JSON with
the fields collectors index on: time, level, process role, pid, logger, message, and the exception when there is
one. The processes of ``serve --api-processes K`` carry their pid in the role too (``api[1234]``), so their text
lines tell the K apart.
"""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s {role} %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": self.role,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


#: Paths whose requests are not access-logged unless asked (``log_probes``): load balancers poll them.
PROBE_PATHS = ("/health", "/ready")


class _NoProbes(logging.Filter):
    """Drops uvicorn's access lines for the probes (its record's args: client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            return args[2].split("?", 1)[0] not in PROBE_PATHS
        return True


def configure_logging(log_format: str = "text", role: str = "api", level: int = logging.INFO,
                      log_probes: bool = False) -> None:
    """One handler on the root logger for every library; ``log_probes`` keeps the access lines of the probes."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(role) if log_format == "json" else logging.Formatter(TEXT_FORMAT.format(role=role)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own loggers propagate to the root handler, so access logs share the format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [] if log_probes else [_NoProbes()]
