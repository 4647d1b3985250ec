"""Keys over HTTP: ``/admin/keys…`` for admin keys (what ``photomaker keys`` does on the command line), and
``/api/key``, which tells any valid key its own name and limits (the web page shows them).

Admin routes answer 403 to a valid non-admin key and 401 to anything else. Changes announce the ``keys`` wake-up,
so every replica's cache follows within milliseconds.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, create_model, field_validator

from ...contract.errors import ErrorType
from ...jobs.keys import KeyExists, KeyLimits, UnknownKey, check_key_name, new_secret
from ..auth import require_admin, require_caller
from ..context import get_ctx
from ..key_cache import Caller

router = APIRouter(tags=["keys"])

#: Limits of a key, one optional field per field of :class:`KeyLimits`; null (or absent at creation): unlimited.
KeyLimitsBody = create_model(
    "KeyLimitsBody",
    __config__=ConfigDict(extra="forbid"),
    **{name: (int | None, Field(None, ge=0, le=KeyLimits.maximum(name), description=text))
       for name, text in KeyLimits.help().items()},
)


class KeyCreateBody(KeyLimitsBody):  # type: ignore[misc,valid-type]
    name: str = Field(description="1-64 letters, digits, '.', '_' or '-'; unique")
    admin: bool = Field(False, description="may use /admin/keys")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_key_name(value)


def _not_found(exc: UnknownKey) -> HTTPException:
    return HTTPException(404, str(exc), headers={"X-Fal-Error-Type": ErrorType.NOT_FOUND})


@router.get("/api/key", summary="The calling key's name and limits")
def my_key(caller: Annotated[Caller, Depends(require_caller)]) -> dict[str, Any]:
    return {"name": caller.name, "kind": caller.kind, "admin": caller.admin, "limits": caller.limits.as_dict()}


@router.get("/admin/keys", summary="List keys (admin)")
async def list_keys(request: Request, _: Annotated[Caller, Depends(require_admin)]) -> list[dict[str, Any]]:
    keys = await to_thread.run_sync(get_ctx(request).store.list_keys)
    return [k.public() for k in keys]


@router.post("/admin/keys", status_code=201, summary="Create a key (admin); the answer holds its secret, once")
async def create_key(
    request: Request, body: KeyCreateBody, _: Annotated[Caller, Depends(require_admin)]
) -> JSONResponse:
    limits = KeyLimits(**body.model_dump(include=set(KeyLimits.names())))
    secret = new_secret()
    try:
        key = await to_thread.run_sync(
            lambda: get_ctx(request).store.create_key(body.name, secret, limits, admin=body.admin)
        )
    except KeyExists as exc:
        raise HTTPException(409, str(exc), headers={"X-Fal-Error-Type": ErrorType.CONFLICT}) from None
    return JSONResponse({**key.public(), "key": secret}, status_code=201)


@router.patch("/admin/keys/{name}", summary="Change a key's limits (admin); fields left out stay as they are")
async def set_limits(
    request: Request,
    name: str,
    body: KeyLimitsBody,  # type: ignore[valid-type]
    _: Annotated[Caller, Depends(require_admin)],
) -> dict[str, Any]:
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    try:
        key = await to_thread.run_sync(get_ctx(request).store.set_key_limits, name, changes)
    except UnknownKey as exc:
        raise _not_found(exc) from None
    return key.public()


@router.post("/admin/keys/{name}/revoke", summary="Revoke a key (admin): refused on every replica within 2 s")
async def revoke(request: Request, name: str, _: Annotated[Caller, Depends(require_admin)]) -> dict[str, Any]:
    try:
        key = await to_thread.run_sync(get_ctx(request).store.revoke_key, name)
    except UnknownKey as exc:
        raise _not_found(exc) from None
    return key.public()


@router.get("/admin/usage", summary="Usage per key (admin)")
async def usage(
    request: Request,
    _: Annotated[Caller, Depends(require_admin)],
    since: Annotated[date | None, Query(description="first UTC day counted (YYYY-MM-DD)")] = None,
) -> list[dict[str, Any]]:
    rows = await to_thread.run_sync(get_ctx(request).store.usage, since)
    return [u.as_dict() for u in rows]
