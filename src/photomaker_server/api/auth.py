"""API keys: ``Authorization: Key <key>``, as fal's clients send it.

A request belongs to the key that made it (its *owner*, a hash of the key, so keys never sit in the database).
With no key configured, one is generated on first start and kept in the job database, so every replica accepts it
(``shared_secrets``); a copy in the data dir (mode 0600) is where the local CLI and the web page (from localhost
only) pick it up.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ..settings import LOCAL_KEY_FILE, Settings
from ..shared_secrets import GeneratedKey

def owner_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _same(a: str, b: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (``compare_digest`` on str raises for it)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class KeyRing:
    """Accepted keys: the configured ones, the deployment's generated key (when none is configured), and the
    *local key* in ``<data dir>/api-key`` when that file exists.

    The local key is what the CLI and the web page on this machine pick up: the generated key's copy, or a key
    an operator put there.
    """

    def __init__(self, settings: Settings, generated: GeneratedKey | None = None) -> None:
        configured = list(settings.api_keys)
        path = settings.data_dir / LOCAL_KEY_FILE
        file_key = (path.read_text().strip() or None) if path.is_file() else None
        self.created = bool(generated and generated.created)
        self.local_key = file_key or (generated.key if generated else None)
        candidates = [*configured, file_key, generated.key if generated else None]
        self.keys = list(dict.fromkeys(k for k in candidates if k))

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
