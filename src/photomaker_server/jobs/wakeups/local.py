"""Wake-ups between the processes of one machine (the SQLite deployment): Unix datagram sockets in a directory.

Each process binds one socket, ``<pid>-<random>.sock``, in a directory next to the database. ``publish`` wakes
this process's subscribers directly and sends the topic to every other socket in the directory; a thread per
process receives and fans out. No polling anywhere: the thread sleeps in ``select``.

Why the backlog: Linux lets at most ``net.unix.max_dgram_qlen`` (10 by default) datagrams wait in a receiver's
queue; a sender then gets ``EAGAIN``. A burst of publishes while the receiving process is busy (its thread
needs the GIL) can hit that. Instead of dropping the topic, the sender keeps it in a per-peer backlog and the
same thread waits until that peer's queue has room (a *connected* datagram socket becomes writable when its
peer's queue drains), then sends the whole backlog as one datagram, topics separated by newlines. Later
publishes to a backlogged peer join the backlog, so a slow process receives fewer, larger datagrams.

Stale sockets (their process died without cleaning up) answer ``ECONNREFUSED``; the sender deletes them.

Socket paths are limited to 107 bytes on Linux. When ``directory`` is too long for that, the sockets go to
``/tmp/photomaker-wakeups-<hash>`` instead, where ``<hash>`` is derived from the resolved directory path, so
every process using the same directory finds the same place. That requires the processes to share ``/tmp``
(not the case under systemd's ``PrivateTmp=`` or in separate containers): keep the data directory path short
there.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import selectors
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .base import WAKE_ALL, HubWakeups

__all__ = ["LocalWakeups", "socket_directory"]

log = logging.getLogger(__name__)

#: ``sizeof(sun_path)`` is 108 on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
#: Longest socket name we create: a 7-digit pid (Linux's pid_max is at most 2**22), ``-``, 8 hex, ``.sock``.
_MAX_NAME = 7 + 1 + 8 + len(".sock")
_SUFFIX = ".sock"
#: A backlog larger than this is sent as one wake-everything instead of a list of topics.
_MAX_BACKLOG = 256


def socket_directory(directory: Path) -> Path:
    """Where the sockets for ``directory`` live: itself, or a short stand-in under /tmp when its path is too long."""
    real = Path(directory).resolve()
    if len(os.fsencode(str(real))) + 1 + _MAX_NAME <= _MAX_SOCKET_PATH:
        return real
    digest = hashlib.sha256(os.fsencode(str(real))).hexdigest()[:16]
    return Path("/tmp") / f"photomaker-wakeups-{digest}"


@dataclass(eq=False)
class _Peer:
    """A connected socket to another process, and what could not be sent to it yet."""

    path: str
    sock: socket.socket
    backlog: set[str] = field(default_factory=set)
    watched: bool = False  # handed to the I/O thread to wait until the peer's queue has room


class LocalWakeups(HubWakeups):
    """Wake-ups for processes sharing ``directory`` on one machine. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.requested_directory = Path(directory)
        self.directory = socket_directory(self.requested_directory)
        fallback = self.directory != self.requested_directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700 if fallback else 0o777)
        if fallback and self.directory.stat().st_uid != os.geteuid():  # /tmp is shared with other users
            raise PermissionError(f"wake-up socket directory {self.directory} belongs to another user")
        self.path = str(self.directory / f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._to_watch: list[_Peer] = []
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wakeups-local", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- publishing ----------------------------------------------------------------------------------------

    def publish(self, topic: str) -> None:
        try:
            self._hub.fan_out(topic)
            self._send_to_peers(topic)
        except Exception:  # best-effort by contract: the store has committed already
            log.exception("could not publish wake-up %r", topic)

    def _send_to_peers(self, topic: str) -> None:
        if self._closing:
            return
        try:
            names = [e.name for e in os.scandir(self.directory) if e.name.endswith(_SUFFIX)]
        except OSError as exc:
            log.warning("cannot list wake-up sockets in %s: %s", self.directory, exc)
            return
        own = os.path.basename(self.path)
        with self._lock:
            if self._closing:  # closed while we listed the directory
                return
            present = set()
            for name in names:
                if name == own:
                    continue
                path = os.path.join(self.directory, name)
                present.add(path)
                peer = self._peers.get(path) or self._connect(path)
                if peer is None:
                    continue
                if peer.backlog:  # waiting for room already: just join the backlog
                    self._add_backlog(peer, [topic])
                else:
                    self._send(peer, [topic])
            for path in [p for p, peer in self._peers.items() if p not in present and not peer.watched]:
                self._peers.pop(path).sock.close()  # its file is gone: the process closed cleanly

    def _connect(self, path: str) -> _Peer | None:
        """Connect to another process's socket (caller holds the lock); delete it if nobody owns it any more."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ECONNREFUSED:
                log.debug("removing stale wake-up socket %s", path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif exc.errno != errno.ENOENT:
                log.warning("cannot reach wake-up socket %s: %s", path, exc)
            return None
        peer = _Peer(path, sock)
        self._peers[path] = peer
        return peer

    def _send(self, peer: _Peer, topics: list[str]) -> bool:
        """Send ``topics`` as one datagram (caller holds the lock). False when the peer is full or gone."""
        payload = WAKE_ALL if len(topics) > _MAX_BACKLOG else "\n".join(topics)
        try:
            peer.sock.send(payload.encode())
            return True
        except BlockingIOError:
            self._add_backlog(peer, topics)
        except OSError as exc:  # ECONNREFUSED: its process closed the socket or died
            self._drop(peer, stale=exc.errno == errno.ECONNREFUSED)
        return False

    def _add_backlog(self, peer: _Peer, topics: list[str]) -> None:
        peer.backlog.update(topics)
        if len(peer.backlog) > _MAX_BACKLOG:
            peer.backlog = {WAKE_ALL}
        if not peer.watched:
            peer.watched = True
            self._to_watch.append(peer)
            self._wake_thread()

    def _drop(self, peer: _Peer, *, stale: bool) -> None:
        if self._peers.get(peer.path) is peer:
            del self._peers[peer.path]
        if not peer.watched:  # a watched socket is closed by the I/O thread, which has it registered
            peer.sock.close()
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(peer.path)

    def _wake_thread(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            self._wake_w.send(b"x")

    # -- the I/O thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._sock:
                        self._receive()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                        if self._closing:
                            return
                        with self._lock:
                            for peer in self._to_watch:
                                sel.register(peer.sock, selectors.EVENT_WRITE, peer)
                            self._to_watch.clear()
                    else:
                        self._flush(sel, key.data)
        except Exception:
            log.exception("wake-up receiver stopped")
        finally:
            sel.close()

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            for topic in data.decode(errors="replace").split("\n"):
                if topic:
                    self._hub.fan_out(topic)

    def _flush(self, sel: selectors.BaseSelector, peer: _Peer) -> None:
        """``peer``'s queue has room: send its backlog (runs in the I/O thread)."""
        with self._lock:
            topics = sorted(peer.backlog)
            peer.backlog.clear()
            if topics:
                self._send(peer, topics)
            if peer.backlog and self._peers.get(peer.path) is peer:
                return  # full again: stay registered, the backlog is back
            sel.unregister(peer.sock)
            peer.watched = False
            if self._peers.get(peer.path) is not peer:
                peer.sock.close()  # dropped while watched: ours to close

    # -- lifecycle -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, delete our socket and release every waiter; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._closing = True
        self._wake_thread()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with self._lock:
            for peer in self._peers.values():
                peer.sock.close()
            self._peers.clear()
            for peer in self._to_watch:
                peer.sock.close()
            self._to_watch.clear()
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()
        super().close()
