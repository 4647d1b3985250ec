"""Status polls of a running request, held until it changes: a polling client learns of the end at once.

Why: fal's clients wait for a request by polling its status in a loop (the Python client every 100 ms, the JS
client every 500 ms), so a finished request is seen on average half an interval after it finished: 50 ms, 250 ms,
for every request, whatever the service does. A client on the SSE stream sees it within a few milliseconds. Holding
the poll closes that gap without any change on the client's side: when a connection asks again about the request
it asked about last, and that request is running, the answer waits until the request changes (it finished or was
cancelled; with ``?logs=1`` also a new log line) or for at most ``status_hold_s``, whichever comes first, and is then
read afresh. So an answer is never older than an immediate one would be; what changes is when it is sent, and only
for a client that is waiting anyway.

Held only when the connection's previous poll, within ``REPEAT_WINDOW_S``, was of the same request and found it
unfinished (queued or running), and only while it runs. Answered at once, as before: the first poll on a connection
(a dashboard, the CLI, a one-off check), a poll of a different request than the connection's last one (a client
going through a list of requests), queued and finished requests, and every poll while the wake-ups cannot be heard
(``wakeups.live``) or the database is down (the usual answer or 503 comes at once).

The wait rides on the ``job:<id>`` (and ``logs:<id>``) wake-ups the worker already sends for SSE streams; wake-ups
are best-effort, so a lost one costs at most ``status_hold_s`` (the answer is then read when the hold ends).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_CONNECTIONS", "REPEAT_WINDOW_S", "RepeatPolls", "connection_of"]

#: A poll repeats the connection's previous one when it comes within this long of it (a client waiting in a loop
#: polls again within its interval plus the hold; kept-alive connections close after a few idle seconds anyway).
REPEAT_WINDOW_S = 5.0
#: Connections remembered at most (the oldest are forgotten first; a forgotten one's next poll is answered at once).
MAX_CONNECTIONS = 10_000


def connection_of(scope: dict[str, Any], owner: str) -> tuple[Any, ...] | None:
    """Who is asking, as far as holding goes: the client's address and port (one kept-alive connection) and its key.
    None where the server does not know the peer (a Unix socket): never held."""
    client = scope.get("client")
    if not client:
        return None
    return (client[0], client[1], owner)


class RepeatPolls:
    """What each connection polled last (which request, when, whether it was unfinished): tells a client waiting in
    a loop for a request from a one-off poll, and from a poll of something that will not change (a finished request
    polled over and over costs one dictionary look-up, no subscription). Event loop only."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S, max_connections: int = MAX_CONNECTIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s, self._max, self._clock = window_s, max_connections, clock
        self._last: OrderedDict[tuple[Any, ...], tuple[str, float, bool]] = OrderedDict()

    def waiting(self, connection: tuple[Any, ...] | None, request_id: str) -> bool:
        """True when ``connection``'s previous poll, within the window, was of ``request_id`` and found it
        unfinished."""
        previous = self._last.get(connection) if connection is not None else None
        return (previous is not None and previous[0] == request_id and previous[2]
                and self._clock() - previous[1] <= self._window_s)

    def answered(self, connection: tuple[Any, ...] | None, request_id: str, unfinished: bool) -> None:
        """Remember the poll just answered on ``connection`` (the most recent connections are kept)."""
        if connection is None:
            return
        self._last.pop(connection, None)
        self._last[connection] = (request_id, self._clock(), unfinished)
        if len(self._last) > self._max:
            self._last.popitem(last=False)
