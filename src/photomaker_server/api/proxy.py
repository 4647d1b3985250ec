"""The route fal's JS client talks to when configured with ``proxyUrl``: ``/api/fal/proxy``.

The client sends every call there with the original method, body and headers plus ``x-fal-target-url`` (the
https URL it would have called at fal). We map that URL onto this server's own routes and re-dispatch the request
inside the app (a rewrite of the ASGI path, so streaming responses stream). Only this service's endpoints are
reachable this way: the proxy never makes an outgoing request.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from ..contract.errors import ErrorType
from ..settings import APP_ID
from ..urls import http_url_or_none

PROXY_PATH = "/api/fal/proxy"
#: Paths the proxy may reach, by the kind of fal host they were addressed to.
_QUEUE_PREFIX = f"/{APP_ID}"
_STORAGE_PATHS = ("/storage/upload/initiate", "/storage/auth/token")
#: The domains fal's clients address (queue.fal.run, fal.run, rest.fal.ai); any other host is not a fal URL.
_FAL_DOMAINS = ("fal.run", "fal.ai")


def _is_fal_host(host: str) -> bool:
    return any(host == domain or host.endswith("." + domain) for domain in _FAL_DOMAINS)


def map_target(target: str) -> tuple[str, str] | None:
    """(path, query) on this server for a fal URL, or None when it is not one of this service's endpoints."""
    parts = http_url_or_none(target)
    if parts is None:  # e.g. an unclosed IPv6 bracket: not a URL we route
        return None
    host, path = parts.host, parts.path_only.rstrip("/") or "/"
    if not _is_fal_host(host):
        return None
    if host.startswith("queue."):
        mapped = path
    elif host.startswith("rest."):
        mapped = path if path in _STORAGE_PATHS else None
    else:  # fal.run and friends: synchronous runs
        mapped = f"/run{path}" if path == _QUEUE_PREFIX else None
    if mapped is None or not (mapped == _QUEUE_PREFIX or mapped.startswith(_QUEUE_PREFIX + "/")
                              or mapped.startswith("/run/") or mapped in _STORAGE_PATHS):
        return None
    if ".." in mapped.split("/"):
        return None
    return mapped, parts.query


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != PROXY_PATH:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        target = headers.get("x-fal-target-url")
        if not target:
            await _reply(send, 400, {"detail": "Missing the x-fal-target-url header", "error_type": ErrorType.BAD_REQUEST})
            return
        mapped = map_target(target)
        if mapped is None:
            await _reply(send, 403, {"detail": f"The proxy only reaches this service's {APP_ID} and storage endpoints",
                                     "error_type": ErrorType.FORBIDDEN})
            return
        path, query = mapped
        inner = dict(scope, path=path, raw_path=path.encode(), query_string=query.encode())
        await self.app(inner, receive, send)


async def _reply(send: Send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
