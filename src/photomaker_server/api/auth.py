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

from fastapi import HTTPException, Request

from ..settings import Settings

KEY_FILE = "api-key"


def owner_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:20]


def load_or_create_local_key(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "pm_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        self.generated = not settings.api_keys
        self.keys = list(settings.api_keys) or [load_or_create_local_key(settings.data_dir)]
        self.local_key = self.keys[0]

    def owner_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key:
            return None
        key = key.strip()
        if any(hmac.compare_digest(key, known) for known in self.keys):
            return owner_id(key)
        return None


async def require_owner(request: Request) -> str:
    """FastAPI dependency: the owner id of a valid key, else 401 in fal's error shape.

    Async on purpose: it does no I/O, and a sync dependency would cost every request a thread-pool hop."""
    owner = request.app.state.ctx.keys.owner_for(request.headers.get("authorization"))
    if owner is None:
        raise HTTPException(
            status_code=401,
            detail="Missing or invalid API key: send 'Authorization: Key <key>'",
            headers={"X-Fal-Error-Type": "unauthorized"},
        )
    return owner
