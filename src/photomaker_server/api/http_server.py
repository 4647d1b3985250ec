"""How the API's uvicorn server treats connections: header deadline, keep-alive, a ceiling on connections.

uvicorn (0.55, httptools) closes a kept-alive connection that stays idle for ``timeout_keep_alive`` seconds, but
it has no deadline for a request's *headers*: a client that connects and sends nothing, or one header byte every
few seconds (slow loris), keeps its socket, its parser and its memory for as long as it likes — and a connection
whose headers never arrive cannot even be attributed to a key. :class:`HeaderDeadlineProtocol` gives every
request ``header_timeout_s`` from its first byte (or from the connection's start) to its last header line, then
closes the connection. With that, idle or trickling connections cost seconds, not forever; the per-key caps on
long responses (``connections.py``) cover clients that did send their headers.

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

__all__ = ["HeaderDeadlineProtocol", "apply_header_timeout", "ensure_file_limit", "uvicorn_options"]

log = logging.getLogger(__name__)
#: File descriptors a process needs besides its client connections (database pool, storage, logs, the worker pipe).
FD_RESERVE = 256

#: Used when a uvicorn Config was made without :func:`uvicorn_options` (it carries no deadline of its own).
DEFAULT_HEADER_TIMEOUT_S = 10.0


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for each request's line and headers."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout_s: float = getattr(config, "photomaker_header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request headers in %gs",
                             self._header_timeout_s)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # the first request's headers are due from now

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a kept-alive connection's next request: due from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``: the protocol above, keep-alive and the connection ceiling."""
    return {
        "http": HeaderDeadlineProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
    }


def apply_header_timeout(config: Any, settings: Settings) -> Any:
    """Give a ``uvicorn.Config`` the header deadline (read by :class:`HeaderDeadlineProtocol`; uvicorn has no
    setting of its own for it). Returns ``config``."""
    config.photomaker_header_timeout_s = settings.header_timeout_s
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
