"""How the API's uvicorn server treats connections: deadlines for headers and bodies, keep-alive, a ceiling.

uvicorn (0.55, httptools) closes a kept-alive connection that stays idle for ``timeout_keep_alive`` seconds, but
it has no deadline for a request's *headers* or *body*: a client that connects and sends nothing, or one header
byte every few seconds (slow loris), or a body one byte at a time, keeps its socket, its parser and its memory for
as long as it likes — and a connection whose headers never arrive cannot even be attributed to a key.
:class:`DeadlineProtocol` gives every request ``header_timeout_s`` from its first byte (or from the connection's
start) to its last header line, and its body ``body_timeout_s`` plus one second per ``body_min_rate`` bytes received
(the rule of Apache's mod_reqtimeout: a fast upload of any allowed size is never cut, a trickle is cut within
seconds). Past either, the connection is closed. With that, idle or trickling connections cost seconds, not
forever; the per-key caps on long responses (``connections.py``) cover clients that did send their request.

``limit_concurrency`` bounds the connections (and tasks) of one process: past it uvicorn answers 503 at once
instead of the process running out of file descriptors, which would stop it answering anyone.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..settings import Settings

__all__ = ["DeadlineProtocol", "apply_deadlines", "ensure_file_limit", "uvicorn_options"]

log = logging.getLogger(__name__)
#: File descriptors a process needs besides its client connections (database pool, storage, logs, the worker pipe).
FD_RESERVE = 256

#: Used when a uvicorn Config was made without :func:`apply_deadlines` (it carries no deadlines of its own).
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 20.0
DEFAULT_BODY_MIN_RATE = 16 * 1024


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for each request's line and headers, and one for its body."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout_s: float = getattr(config, "photomaker_header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        self._body_timeout_s: float = getattr(config, "photomaker_body_timeout_s", DEFAULT_BODY_TIMEOUT_S)
        self._body_min_rate: float = getattr(config, "photomaker_body_min_rate", DEFAULT_BODY_MIN_RATE)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_received = 0

    def _arm(self, seconds: float, on_expiry: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self, what: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that was too slow to send %s", what)
            self.transport.close()

    def _headers_expired(self) -> None:
        self._close(f"its request headers (within {self._header_timeout_s:g} s)")

    def _body_due(self) -> float:
        return self._body_started + self._body_timeout_s + self._body_received / self._body_min_rate

    def _body_check(self) -> None:
        left = self._body_due() - self.loop.time()
        if left > 0:  # it kept sending: look again when its allowance runs out
            self._deadline = self.loop.call_later(left, self._body_check)
        else:
            self._close(f"its request body (at least {self._body_min_rate:g} bytes/s after {self._body_timeout_s:g} s)")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout_s, self._headers_expired)  # the first request's headers are due from now

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request: due from its first byte
            self._arm(self._header_timeout_s, self._headers_expired)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._body_started, self._body_received = self.loop.time(), 0
        self._arm(self._body_timeout_s, self._body_check)  # no body at all: on_message_complete follows at once

    def on_body(self, body: bytes) -> None:
        self._body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: the protocol above, keep-alive and the connection ceiling."""
    return {
        "http": DeadlineProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
    }


def apply_deadlines(config: Any, settings: Settings) -> Any:
    """Give a ``uvicorn.Config`` the header and body deadlines (read by :class:`DeadlineProtocol`; uvicorn has no
    settings of its own for them; they travel with the config to ``--api-processes`` children). Returns
    ``config``."""
    config.photomaker_header_timeout_s = settings.header_timeout_s
    config.photomaker_body_timeout_s = settings.body_timeout_s
    config.photomaker_body_min_rate = settings.body_min_rate
    return config


def ensure_file_limit(settings: Settings) -> None:
    """Raise this process's soft limit on open files (children inherit it) so that ``max_connections`` clients
    fit: a process that runs out of descriptors cannot accept anyone, while one at ``limit_concurrency`` still
    answers 503. Warns when the hard limit is too low for that."""
    wanted = settings.max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open-file limit %d is below PHOTOMAKER_MAX_CONNECTIONS + %d (%d): lower max_connections or "
                    "raise `ulimit -n`", soft, FD_RESERVE, wanted)
