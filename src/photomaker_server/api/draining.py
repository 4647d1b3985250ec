"""While the service shuts down: refuse new work, keep answering about the work already accepted.

Between the stop signal and the worker's exit (up to the shutdown grace period) the listener stays open, so clients
can keep polling the request that is finishing and fetch its result. What would add work is refused: every POST
(submit, synchronous run, uploads) gets 503 in fal's error shape with ``Retry-After``, and ``/ready`` turns 503 so a
load balancer or Kubernetes stops sending traffic here. A plain ASGI wrapper, so no route needs to know.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..contract.errors import ErrorType

SHUTTING_DOWN = "The server is shutting down; submit again in a moment (to another instance, or after the restart)"
#: What ``Retry-After`` suggests: about the time a restart takes to listen again (the model loads after that).
RETRY_AFTER_S = 10


class DrainingMiddleware:
    def __init__(self, app: Any, draining: threading.Event, retry_after_s: int = RETRY_AFTER_S) -> None:
        self.app = app
        self.draining = draining
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.draining.is_set():
            if scope["method"] == "POST":
                await self._answer(send, {"detail": SHUTTING_DOWN, "error_type": ErrorType.SERVER_SHUTTING_DOWN},
                                   {"x-fal-error-type": "server_shutting_down"})
                return
            if scope["path"] == "/ready":
                await self._answer(send, {"ready": False, "detail": "shutting down", "workers": []}, {})
                return
        await self.app(scope, receive, send)

    async def _answer(self, send: Any, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        all_headers = {"content-type": "application/json", "content-length": str(len(data)),
                       "retry-after": str(self.retry_after_s), "connection": "close", **headers}
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()]})
        await send({"type": "http.response.body", "body": data})
