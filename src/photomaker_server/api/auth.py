"""API keys: ``Authorization: Key <key>``, as fal's clients send it.

A request belongs to the key that made it (its *owner*, a hash of the key, so keys never sit in the database).
Two kinds of key are accepted: managed keys (``photomaker keys create``, stored as hashes in the job database and
cached in every API process, ``key_cache.py``) and keys from configuration. With no key configured, one is
generated on first start and kept in the job database, so every replica accepts it (``shared_secrets``); a copy in
the data dir (mode 0600) is where the local CLI and the web page (from localhost only) pick it up. Configured keys
are registered in the database under stable names (``config-1``, …) for listings, usage and metrics.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from ..contract.errors import ErrorType
from ..jobs.keys import MANAGED_KIND, owner_of
from ..jobs.protocol import JobStore
from ..settings import LOCAL_KEY_FILE, Settings
from ..shared_secrets import GeneratedKey
from .key_cache import Caller, KeyCache

#: The owner id of a key (kept under this name for callers of earlier releases).
owner_id = owner_of


def _same(a: str, b: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (``compare_digest`` on str raises for it)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class KeyRing:
    """Accepted keys: the configured ones, the deployment's generated key (when none is configured), and the
    *local key* in ``<data dir>/api-key`` when that file exists.

    The local key is what the CLI and the web page on this machine pick up: the generated key's copy, or a key
    an operator put there.
    """

    def __init__(self, settings: Settings, generated: GeneratedKey | None = None, store: JobStore | None = None) -> None:
        configured = list(settings.api_keys)
        path = settings.data_dir / LOCAL_KEY_FILE
        file_key = (path.read_text().strip() or None) if path.is_file() else None
        self.created = bool(generated and generated.created)
        self.local_key = file_key or (generated.key if generated else None)
        candidates = [*configured, file_key, generated.key if generated else None]
        self.keys = list(dict.fromkeys(k for k in candidates if k))
        #: Managed keys and every key's name; None when built without a store (then configured keys only).
        self.cache: KeyCache | None = None
        self._names: dict[str, str] = {}
        if store is not None:
            self._names = store.register_configured_keys(self.keys)
            self.cache = KeyCache(store)
            self.cache.reload()

    def identify(self, authorization: str | None) -> Caller | None:
        """Who sent ``Authorization``; None for a missing, malformed, unknown or revoked key. No database read:
        managed keys come from the process's cache."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key:
            return None
        key = key.strip()
        if any(_same(key, known) for known in self.keys):
            owner = owner_id(key)
            named = self.cache.by_owner(owner) if self.cache else None
            return Caller(owner=owner, name=named.name if named else self._names.get(owner))
        managed = self.cache.managed(key) if self.cache else None
        if managed is None or managed.revoked:
            return None
        return Caller(owner=managed.owner, name=managed.name, admin=managed.admin, limits=managed.limits,
                      kind=MANAGED_KIND)

    def owner_for(self, authorization: str | None) -> str | None:
        caller = self.identify(authorization)
        return caller.owner if caller else None


#: fal's key header as an OpenAPI security scheme: the API docs get an Authorize dialog, and every route that
#: depends on ``require_owner`` is marked as needing it. Checking stays in ``require_owner`` (fal's 401 shape).
KEY_HEADER = APIKeyHeader(
    name="Authorization",
    scheme_name="FalKey",
    auto_error=False,
    description="fal's key header. In the Authorize dialog type `Key <your key>`: the word Key, a space, then the "
    "key (`photomaker serve` prints where it stored its generated key).",
)


def caller_of(request: Request, authorization: str | None) -> Caller:
    """Who a valid key belongs to, else 401 in fal's error shape (before anything is looked up, so an unknown or
    revoked key never learns whether a request id exists). Reads only this process's memory (configured keys, the
    key cache): quick enough for the event loop."""
    caller = request.app.state.ctx.keys.identify(authorization)
    if caller is None:
        raise HTTPException(
            status_code=401,
            detail="Missing or invalid API key: send 'Authorization: Key <key>'",
            headers={"X-Fal-Error-Type": ErrorType.UNAUTHORIZED},
        )
    return caller


def owner_of_request(request: Request) -> str:
    """:func:`require_owner` for a direct route (``direct_route.py``), which reads its inputs itself."""
    return caller_of(request, request.headers.get("authorization")).owner


async def require_caller(request: Request,
                         authorization: Annotated[str | None, Security(KEY_HEADER)] = None) -> Caller:
    """FastAPI dependency: :func:`caller_of`. ``async``: no thread hop for a check in memory."""
    return caller_of(request, authorization)


async def require_owner(caller: Annotated[Caller, Depends(require_caller)]) -> str:
    """FastAPI dependency: the owner id of a valid key, else 401."""
    return caller.owner


async def require_admin(caller: Annotated[Caller, Depends(require_caller)]) -> Caller:
    """FastAPI dependency: an admin key (``photomaker keys create NAME --admin``), else 403."""
    if not caller.admin:
        raise HTTPException(403, "This operation needs an admin key (photomaker keys create NAME --admin)",
                            headers={"X-Fal-Error-Type": ErrorType.FORBIDDEN})
    return caller
