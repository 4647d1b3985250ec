"""The running cluster's control socket: ``cluster.py ctl …`` asks, the cluster answers.

A Unix stream socket in the cluster directory (``control.sock``), one JSON object per line each way: the request
``{"command": "kill", "names": ["worker1"], ...}``, the answer ``{"ok": true, ...}`` or ``{"ok": false, "error":
"..."}``. A Unix socket rather than a TCP port: only local users with access to the directory can break the lab,
no port has to be chosen, and the file's presence says where the lab runs. It is removed when the lab stops.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    handler: Handler


class _Connection(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            answer = self.server.handler(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as one line
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class ControlServer:
    """Serves ``handler`` on ``path`` in a background thread until ``close``."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        path.unlink(missing_ok=True)  # a stale socket of a lab that was killed (the caller checked none answers)
        self._server = _Server(str(path), _Connection)
        self._server.handler = handler
        path.chmod(0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def request(path: Path, payload: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Send one request to the lab at ``path``; raises ``ConnectionError`` when no lab answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(f"no cluster is running at {path.parent} ({exc.strerror})") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the cluster closed the control connection without answering")
    return json.loads(data)


def answering(path: Path) -> bool:
    """Whether a running lab answers on ``path`` (a socket file alone may be left by a killed one)."""
    try:
        return request(path, {"command": "ping"}, timeout=5).get("ok", False)
    except (ConnectionError, OSError, ValueError):
        return False
