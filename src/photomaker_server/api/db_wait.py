"""Hold a request while the job database reconnects, instead of answering 503 at once.

Why: a database restart takes seconds to tens of seconds, and the official Python client (``fal-client``) does not
retry a 503 that carries our ``x-fal-request-id`` or fal's JSON body: it raises at once, so a user's ``subscribe``
died on every database restart. Every request that needs the database therefore waits here while it is away, up
to ``database_wait_s`` (default 45 s: within ``fal-client``'s 120 s read timeout and under the 60 s a typical
reverse proxy waits for an answer), and is then run as if nothing had happened. Only past that wait does the
client get the 503 + ``Retry-After`` (which ``@fal-ai/client`` retries; ``fal-client`` raises). See
docs/clients.md for exactly what each client does.

How: an ASGI middleware. It keeps the request body as it is read, runs the app, and when the app's answer is the
job database's 503 (marked in the request's state by the exception handler, see ``errors.py``) it holds that
answer back, waits until the database answers a probe again (one probe per process at a time), and runs the app
again with the same body. Requests that do not need the database (files, uploads, the web page) never wait. Responses that have begun (SSE streams, ``/run``) are never held back: those ride out
an outage themselves. A client that hung up while waiting is not served (no job is submitted for nobody).
Probes (``/health``, ``/ready``) and ``/metrics`` are never held: they must answer at once, and say what is true.

A retried submit whose first try failed in the middle of its commit could, in principle, be stored twice (the
database's answer was lost); the window is the commit's own round trip.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio import to_thread

from ..jobs.health import DatabaseHealth
from ..jobs.records import StoreUnavailable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Set in a request's state by the handler that turns ``StoreUnavailable`` into a 503.
UNAVAILABLE_MARK = "photomaker_database_unavailable"
#: Paths that are never held: probes and metrics answer at once with what is true now.
NOT_HELD = frozenset({"/health", "/ready", "/metrics"})
#: How often a waiting request probes the database (one probe per process at a time).
PROBE_EVERY_S = 0.5


class DatabaseProbe:
    """One probe of the database at a time for every waiting request of this process."""

    def __init__(self, health: DatabaseHealth, ping: Callable[[], None]) -> None:
        self.health, self.ping = health, ping
        self._lock = anyio.Lock()
        self._last = float("-inf")

    async def wait_up(self, deadline: float) -> bool:
        """Wait until the database is reachable (True) or ``deadline`` (``time.monotonic``) passes."""
        while not self.health.up:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            async with self._lock:
                if not self.health.up and time.monotonic() - self._last >= PROBE_EVERY_S:
                    self._last = time.monotonic()
                    try:
                        await to_thread.run_sync(self.ping)
                    except StoreUnavailable:
                        pass
            if not self.health.up:
                await anyio.sleep(min(PROBE_EVERY_S / 2, max(0.0, deadline - time.monotonic())))
        return True


class _Body:
    """The request's body messages as the app reads them, replayed to every later run of the app."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.messages: list[Message] = []
        self.complete = False
        self.disconnected = False

    async def _read(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.messages.append(message)
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.disconnected = True
        return message

    def replay(self) -> Receive:
        position = 0

        async def receive() -> Message:
            nonlocal position
            if position < len(self.messages):  # read by an earlier run: replayed
                position += 1
                return self.messages[position - 1]
            message = await self._read()
            position = len(self.messages)  # a body message just read is this run's too: not served twice
            return message

        return receive

    async def client_gone(self) -> bool:
        """Whether the client has hung up (looked at without waiting, once the body has been read in full)."""
        if self.disconnected or not self.complete:
            return self.disconnected
        with anyio.CancelScope() as scope:
            scope.cancel()  # look at what is there already, wait for nothing
            await self._read()
        return self.disconnected


class _HeldAnswer:
    """Passes the app's answer on, unless it is the job database's 503, which it keeps."""

    def __init__(self, send: Send, state: dict[str, Any]) -> None:
        self._send, self._state = send, state
        self.held: list[Message] = []

    async def send(self, message: Message) -> None:
        if self.held or (message["type"] == "http.response.start" and message["status"] == 503
                         and self._state.get(UNAVAILABLE_MARK)):
            self.held.append(message)
            return
        await self._send(message)

    async def release(self) -> None:
        for message in self.held:
            await self._send(message)


class DatabaseWaitMiddleware:
    """See the module's docstring. ``wait_s`` 0 turns holding off (every such request answers 503 at once)."""

    def __init__(self, app: Any, probe: DatabaseProbe, wait_s: float) -> None:
        self.app, self.probe, self.wait_s = app, probe, wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.wait_s <= 0 or scope["path"] in NOT_HELD:
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.wait_s
        body = _Body(receive)
        while True:
            # Run first, whatever the database's state: a request that does not need it (a file, the web page)
            # must not wait for it.
            state = dict(scope.get("state") or {})
            answer = _HeldAnswer(send, state)
            await self.app({**scope, "state": state}, body.replay(), answer.send)
            if not answer.held:
                return
            if self.probe.health.up:  # back already (another call got through): give it a moment
                await anyio.sleep(min(PROBE_EVERY_S, max(0.0, deadline - time.monotonic())))
            back = await self.probe.wait_up(deadline)
            if await body.client_gone():
                return  # nobody to answer, and nothing to submit for nobody
            if not back or time.monotonic() >= deadline:
                await answer.release()
                return
