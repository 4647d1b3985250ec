"""Wake-ups between machines through PostgreSQL's ``LISTEN``/``NOTIFY``.

One process holds ONE listening connection (``LISTEN photomaker``) in a background thread and fans every
notification out to its in-process subscribers, however many SSE streams and waiters it has: the database sees
one idle backend per process, not one per stream. The payload is the topic.

``publish`` runs ``SELECT pg_notify('photomaker', topic)`` on a second, autocommit connection of its own
(guarded by a lock, reopened after a failure). PostgreSQL delivers the notification to every listener,
including this process's own. If the notification cannot be sent, this process's subscribers are woken
directly and the failure is logged; ``publish`` never raises. A stale connection gets one retry on a fresh
one; a failed connection attempt is not retried (during an outage each publish costs one attempt, bounded by
``connect_timeout``, and the store's own queries fail the same way).

The listener thread sleeps in ``select`` on the connection's socket and a wake-up pipe (for :meth:`close`): no
timeouts, no polling. When the connection drops (PostgreSQL restarted, a network failure noticed through TCP
keepalives), it reconnects with exponential backoff and then wakes every subscriber once, because
notifications sent while it was away are lost and waiters must re-check the store.

A store can also announce inside its own transaction (``SELECT pg_notify('photomaker', :topic)`` before
``COMMIT``): PostgreSQL then delivers at commit and never for a rolled-back transaction. :data:`CHANNEL` is
the channel name for that.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import selectors
import socket
import threading
from typing import Any

from .base import WAKE_ALL, HubWakeups

__all__ = ["CHANNEL", "PostgresWakeups", "libpq_url"]

log = logging.getLogger(__name__)

CHANNEL = "photomaker"
#: Reconnection backoff: first delay, ceiling (seconds); each failure doubles the delay, with jitter.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 5.0
#: Connection options: give up connecting after this long; find a dead TCP peer within about a minute.
_CONNECT_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://…`` (SQLAlchemy's form) → ``postgresql://…`` (libpq's); other URLs unchanged."""
    return re.sub(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", r"\1://", url)


class PostgresWakeups(HubWakeups):
    """Wake-ups for every process using the PostgreSQL database at ``url``. Thread-safe.

    Connects the listener before returning (a wrong URL fails here, loudly); after that, connection problems
    are logged and retried, never raised.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg  # imported here so SQLite-only installs never need it

        self._psycopg = psycopg
        self.url = libpq_url(url)
        #: The channel listened to; a job store given it as ``notify_channel`` announces inside its transactions.
        self.channel = CHANNEL
        self._publish_lock = threading.Lock()
        self._publish_conn: Any = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._closed = False
        #: Bumped each time the listener (re)connects; lets tests and metrics see reconnections.
        self.connections = 0
        self._listener = self._listen()
        self._thread = threading.Thread(target=self._run, name="wakeups-postgres", daemon=True)
        self._thread.start()

    def _connect(self) -> Any:
        return self._psycopg.connect(self.url, **_CONNECT_KWARGS)

    def _listen(self) -> Any:
        conn = self._connect()
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self.connections += 1
        return conn

    @property
    def live(self) -> bool:
        """False from the moment the listener's connection fails until it is back (notifications sent meanwhile
        are lost; the reconnect announces ``WAKE_ALL``)."""
        conn = self._listener
        return conn is not None and not conn.closed and not conn.broken and not self._closed

    @property
    def listener_backend_pid(self) -> int | None:
        """The server process id of the listening connection (``pg_stat_activity.pid``); None while reconnecting."""
        conn = self._listener
        return None if conn is None or conn.closed else conn.info.backend_pid

    # -- publishing ----------------------------------------------------------------------------------------

    def publish(self, topic: str) -> None:
        if self._closed:
            return
        if not self._notify(topic):  # not sent: at least this process's own waiters hear it
            try:
                self._hub.fan_out(topic)
            except Exception:
                log.exception("wake-up fan-out failed for %r", topic)

    def _notify(self, topic: str) -> bool:
        with self._publish_lock:
            for attempt in (1, 2):
                fresh = self._publish_conn is None or self._publish_conn.closed
                try:
                    if fresh:
                        self._publish_conn = self._connect()
                    self._publish_conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, topic))
                    return True
                except Exception as exc:
                    self._close_publisher()
                    if fresh or attempt == 2:  # a stale connection gets one retry on a fresh one
                        log.warning("could not publish wake-up %r through PostgreSQL: %s", topic, exc)
                        return False
            return False

    def _close_publisher(self) -> None:
        if self._publish_conn is not None:
            with contextlib.suppress(Exception):
                self._publish_conn.close()
            self._publish_conn = None

    # -- the listener thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = _BACKOFF_FIRST_S
        while not self._closing.is_set():
            if self._listener is None:
                try:
                    self._listener = self._listen()
                except Exception as exc:
                    level = logging.WARNING if delay == _BACKOFF_FIRST_S else logging.DEBUG  # once per outage
                    log.log(level, "wake-up listener cannot reach PostgreSQL (retrying with backoff): %s", _first_line(exc))
                    self._closing.wait(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                    continue
                log.info("wake-up listener reconnected to PostgreSQL")
                delay = _BACKOFF_FIRST_S
                self._hub.fan_out(WAKE_ALL)  # what was announced while we were away is lost: everyone re-checks
            try:
                self._receive(self._listener)
            except Exception as exc:
                if self._closing.is_set():
                    break
                log.warning("wake-up listener lost its PostgreSQL connection: %s", _first_line(exc))
                listener, self._listener = self._listener, None  # not live from here until the reconnect
                with contextlib.suppress(Exception):
                    listener.close()
                self._closing.wait(delay * random.uniform(0.8, 1.2))  # a restarting server refuses at first
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()

    def _receive(self, conn: Any) -> None:
        """Fan notifications out until the connection fails (raises) or :meth:`close` is called (returns)."""
        with selectors.DefaultSelector() as sel:  # epoll: file descriptors above 1024 are fine
            sel.register(conn.fileno(), selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                events = sel.select()
                if any(key.fileobj is self._wake_r for key, _ in events):
                    return
                for notify in conn.notifies(timeout=0):  # reads what the socket has; does not wait
                    self._hub.fan_out(notify.payload)
                if conn.closed or conn.broken:
                    raise self._psycopg.OperationalError("listener connection closed")

    # -- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, close both connections and release every waiter; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        with self._publish_lock:
            self._close_publisher()
        self._wake_r.close()
        self._wake_w.close()
        super().close()


def _first_line(exc: BaseException) -> str:
    """libpq's messages run over several lines; a log line should not."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
