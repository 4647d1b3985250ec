"""The local key for the person at the console, without guessing who is local.

The server used to hand its key to any request that *looked* local (loopback peer, loopback ``Host``, no forwarding
headers). A reverse proxy on the same machine makes every visitor look like that — nginx's plain ``proxy_pass``
sends ``Host: 127.0.0.1`` and no forwarding header — so the key went to anyone who could reach the proxy. No
property of a request can tell these apart; only a secret can.

So, as Jupyter does: at start-up the server prints a login link, ``<base URL>/?token=…``, to its console (and
``photomaker login-link`` prints a fresh one). The token is signed with the deployment's token secret (every
replica can check it), expires after :data:`LINK_TTL_S` and is good for one use (the job database remembers used
ones). The page exchanges it (``POST /api/login``) for a session cookie — ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it), ``Secure`` over HTTPS — and with that cookie the page asks for
the local key (``GET /api/session``). Whoever never saw the console gets nothing, however local they look.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

__all__ = ["LINK_TTL_S", "SESSION_COOKIE", "SESSION_TTL_S", "login_link", "new_link_token", "new_session",
           "read_link_token", "valid_session"]

#: A printed link is good for a day (and once).
LINK_TTL_S = 24 * 3600
#: A browser stays signed in this long (until the deployment's token secret changes).
SESSION_TTL_S = 30 * 86400
SESSION_COOKIE = "photomaker_session"
_LINK, _SESSION = "login-link", "web-session"


def _mac(secret: bytes, purpose: str, payload: str) -> str:
    # The purpose is part of what is signed: a link token is never a session, nor an upload token (files.py).
    return hmac.new(secret, f"{purpose}\n{payload}".encode(), hashlib.sha256).hexdigest()


def _sign(secret: bytes, purpose: str, fields: list) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    return f"{payload}.{_mac(secret, purpose, payload)}"


def _verify(secret: bytes, purpose: str, token: object) -> list | None:
    if not isinstance(token, str) or len(token) > 512:
        return None
    payload, _, mac = token.partition(".")
    expected = _mac(secret, purpose, payload)
    if not mac or not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected.encode()):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    return fields if isinstance(fields, list) else None


def new_link_token(secret: bytes, now: float) -> str:
    return _sign(secret, _LINK, [int(now + LINK_TTL_S), secrets.token_hex(16)])


def login_link(base_url: str, secret: bytes, now: float) -> str:
    """The link to print: the web page, carrying a fresh one-time token."""
    return f"{base_url.rstrip('/')}/?token={new_link_token(secret, now)}"


def read_link_token(secret: bytes, token: object, now: float) -> tuple[str, float] | None:
    """``(nonce, expires_at)`` of a genuine, unexpired link token (its single use is the caller's to record with
    ``JobStore.use_token_once``), else None."""
    fields = _verify(secret, _LINK, token)
    if fields is None or len(fields) != 2 or not isinstance(fields[0], int) or not isinstance(fields[1], str):
        return None
    expires_at, nonce = fields
    return (nonce, float(expires_at)) if now < expires_at else None


def new_session(secret: bytes, now: float) -> str:
    """The session cookie's value."""
    return _sign(secret, _SESSION, [int(now + SESSION_TTL_S), secrets.token_hex(8)])


def valid_session(secret: bytes, value: str | None, now: float) -> bool:
    fields = _verify(secret, _SESSION, value)
    return bool(fields) and len(fields) == 2 and isinstance(fields[0], int) and now < fields[0]
