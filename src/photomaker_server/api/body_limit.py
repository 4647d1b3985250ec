"""A cap on the size of request bodies, enforced while the body arrives (413 in fal's error shape).

Without it, a client could make the API buffer (and, before data URIs were moved to storage, store) any amount of
data. The check happens at the HTTP layer, before a route reads the body in full:

* a ``Content-Length`` over the cap is answered 413 at once, without reading a byte of the body;
* a body without one (chunked) is counted as it streams in, and refused as soon as the count passes the cap.

Starlette's ``RequestBodyLimitMiddleware`` does the counting too, but answers in plain text and with one limit for
every path; fal's clients expect ``{"detail", "error_type"}`` and the upload routes need their own, larger cap.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..contract.errors import ErrorType

ERROR_TYPE = ErrorType.REQUEST_TOO_LARGE
#: Paths whose bodies are file uploads, capped per file (``max_download_bytes``) by their routes.
UPLOAD_PREFIXES = ("/storage/upload/", "/files/upload")
#: Room for multipart framing and headers around an upload of the largest allowed size.
UPLOAD_SLACK_BYTES = 1024 * 1024


#: (cap in bytes, the setting that sets it) for a request path.
Limit = tuple[int, str]


def _message(limit: Limit) -> str:
    size, setting = limit
    return (
        f"The request body is larger than this server's limit of {size} bytes ({setting}); "
        "upload large files to storage first (POST /storage/upload/initiate) and send their URLs instead"
    )


class RequestTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the cap. An HTTPException, so FastAPI's body parsing lets it
    through (it turns other exceptions into a 400) and the app's handler answers it in fal's shape."""

    def __init__(self, limit: Limit) -> None:
        super().__init__(413, _message(limit), headers={"X-Fal-Error-Type": ERROR_TYPE})


def limits_for(max_request_bytes: int, max_upload_bytes: int) -> Callable[[str], Limit]:
    """The cap for a path: uploads get ``max_upload_bytes`` plus framing (or the general cap, if larger)."""
    upload_cap = max(max_request_bytes, max_upload_bytes + UPLOAD_SLACK_BYTES)
    general = (max_request_bytes, "PHOTOMAKER_MAX_REQUEST_BYTES")
    upload = (upload_cap, "PHOTOMAKER_MAX_DOWNLOAD_BYTES" if upload_cap > max_request_bytes else general[1])

    def limit(path: str) -> Limit:
        return upload if path.startswith(UPLOAD_PREFIXES) else general

    return limit


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(send: Send, limit: Limit) -> None:
    body = json.dumps({"detail": _message(limit), "error_type": ERROR_TYPE}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"x-fal-error-type", ERROR_TYPE.encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI (no buffering of its own): wraps ``receive`` to count, and answers 413 itself when the app has
    not started a response yet."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], Limit]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit[0]:
            await _refuse(send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit[0]:
                    raise RequestTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except RequestTooLarge:
            if started:
                raise
            await _refuse(send, limit)
