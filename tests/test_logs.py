"""Log lines: the probes a load balancer polls are not access-logged unless asked for."""

from __future__ import annotations

import logging

from photomaker_server.logs import configure_logging


def _access(path: str, status: int = 200) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "GET", path, "1.1", status), None)


def test_probes_are_not_access_logged_by_default_and_everything_else_is():
    configure_logging("text", "api")
    access = logging.getLogger("uvicorn.access")
    assert not access.filter(_access("/health"))
    assert not access.filter(_access("/ready", 503))
    assert not access.filter(_access("/ready?verbose=1"))
    assert access.filter(_access("/metrics"))
    assert access.filter(_access("/fal-ai/photomaker/requests/x/status"))
    assert access.filter(_access("/healthy"))


def test_log_probes_keeps_them():
    configure_logging("text", "api", log_probes=True)
    assert logging.getLogger("uvicorn.access").filter(_access("/health"))
    configure_logging("text", "api")
