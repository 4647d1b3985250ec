"""API keys: ``Authorization: Key <key>``, as fal's clients send it.

A request belongs to the key that made it (its *owner*, a hash of the key, so keys never sit in the database).
With no key configured, one is generated on first start and kept in the data dir (mode 0600), where the local
CLI and the web page (from localhost only) pick it up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ..settings import Settings

KEY_FILE = "api-key"


def owner_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:20]


def load_or_create_local_key(data_dir: Path) -> tuple[str, bool]:
    """(key, whether it was created now). Safe when several processes start at once: the file appears whole
    (written aside, then hard-linked into place) and the loser of a race reads the winner's key."""
    path = data_dir / KEY_FILE
    if path.is_file():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "pm_" + secrets.token_urlsafe(32)
    tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    try:
        os.link(tmp, path)
        return key, True
    except FileExistsError:
        return path.read_text().strip(), False
    finally:
        tmp.unlink(missing_ok=True)


def _same(a: str, b: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (``compare_digest`` on str raises for it)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class KeyRing:
    """Accepted keys: the configured ones, plus the *local key* in ``<data dir>/api-key`` when that file exists.

    The local key is what the CLI and the web page on this machine pick up. It is generated when no key is
    configured; an operator who configures keys gets no local key unless they put one in that file.
    """

    def __init__(self, settings: Settings) -> None:
        configured = list(settings.api_keys)
        path = settings.data_dir / KEY_FILE
        self.created = False
        if path.is_file():
            local: str | None = path.read_text().strip() or None
        elif not configured:
            local, self.created = load_or_create_local_key(settings.data_dir)
        else:
            local = None
        self.local_key = local
        self.keys = configured + ([local] if local and local not in configured else [])

    def owner_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key:
            return None
        key = key.strip()
        if any(_same(key, known) for known in self.keys):
            return owner_id(key)
        return None


#: fal's key header as an OpenAPI security scheme: the API docs get an Authorize dialog, and every route that
#: depends on ``require_owner`` is marked as needing it. Checking stays in ``require_owner`` (fal's 401 shape).
KEY_HEADER = APIKeyHeader(
    name="Authorization",
    scheme_name="FalKey",
    auto_error=False,
    description="fal's key header. In the Authorize dialog type `Key <your key>`: the word Key, a space, then the "
    "key (`photomaker serve` prints where it stored its generated key).",
)


def require_owner(request: Request, authorization: Annotated[str | None, Security(KEY_HEADER)] = None) -> str:
    """FastAPI dependency: the owner id of a valid key, else 401 in fal's error shape."""
    owner = request.app.state.ctx.keys.owner_for(authorization)
    if owner is None:
        raise HTTPException(
            status_code=401,
            detail="Missing or invalid API key: send 'Authorization: Key <key>'",
            headers={"X-Fal-Error-Type": "unauthorized"},
        )
    return owner
