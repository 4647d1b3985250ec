"""File storage over HTTP: fal's upload flows, a plain multipart upload, and serving stored files.

* ``POST /storage/upload/initiate`` → a signed one-time ``upload_url`` (PUT the bytes, no Authorization needed:
  fal's JS client sends none there) and the ``file_url`` it will have.
* ``POST /storage/auth/token`` + ``POST /files/upload`` — what fal's Python client tries first.
* ``POST /storage/upload/multipart`` — a form upload for curl and the web page.
* ``GET /files/<token>/<name>`` — unguessable URLs, no key needed (like fal's CDN links).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from ...contract.errors import ErrorType
from ...storage.base import UploadError
from ..auth import require_owner
from ..context import get_ctx
from ..errors import error_response
from ..schemas import UploadedFile, UploadInitiate, UploadInitiated

router = APIRouter(tags=["storage"])
TOKEN_TTL_S = 3600


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"Upload larger than this server's limit of {limit} bytes (PHOTOMAKER_MAX_DOWNLOAD_BYTES)",
                         headers={"X-Fal-Error-Type": ErrorType.REQUEST_TOO_LARGE})


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything above ``limit`` without buffering more than that."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/storage/upload/initiate", response_model=UploadInitiated, summary="Start a signed one-time upload")
def initiate_upload(
    request: Request, body: UploadInitiate, owner: Annotated[str, Depends(require_owner)]
) -> UploadInitiated:
    ctx = get_ctx(request)
    upload_url, file_url = ctx.files.create_upload(owner, body.content_type, body.file_name, ctx.settings.base_url)
    return UploadInitiated(upload_url=upload_url, file_url=file_url)


@router.put("/storage/upload/{upload_id}", summary="Upload to a signed URL (no key needed)")
async def put_upload(upload_id: str, request: Request, sig: str = "") -> JSONResponse:
    ctx = get_ctx(request)
    try:
        # Storage calls run in a thread: an object store that is slow or down must not stall this event loop.
        # Before reading a byte: a bad URL must not cost a whole body.
        key = await to_thread.run_sync(ctx.storage.check_upload, upload_id, sig)
    except UploadError as exc:
        return error_response(ErrorType.of(exc.reason, ErrorType.BAD_REQUEST), exc.message)
    data = await read_capped(request, ctx.settings.max_download_bytes)
    try:  # charged to the key that asked for the URL, within its quota
        stored = await to_thread.run_sync(ctx.files.accept_upload, key, upload_id, sig, data)
    except UploadError as exc:
        return error_response(ErrorType.of(exc.reason, ErrorType.BAD_REQUEST), exc.message)
    return JSONResponse({"url": ctx.file_url(stored.key), "file_size": stored.size}, status_code=200)


# --- fal's Python client: a short-lived upload token, then POST /files/upload ------------------------------------
def _sign_token(ctx, owner: str, expires_at: int) -> str:  # noqa: ANN001
    payload = base64.urlsafe_b64encode(json.dumps([owner, expires_at, secrets.token_hex(4)]).encode()).decode()
    mac = hmac.new(ctx.token_secret, payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def _verify_token(ctx, token: str) -> str | None:  # noqa: ANN001
    payload, _, mac = token.partition(".")
    expected = hmac.new(ctx.token_secret, payload.encode(), hashlib.sha256).hexdigest()
    if not mac or not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), expected.encode()):
        return None
    try:
        owner, expires_at, _ = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except ValueError:
        return None
    return owner if time.time() < expires_at else None


@router.post("/storage/auth/token", summary="A short-lived upload token (fal's Python client)")
def storage_token(request: Request, owner: Annotated[str, Depends(require_owner)]) -> dict:
    ctx = get_ctx(request)
    expires_at = int(time.time()) + TOKEN_TTL_S
    return {
        "token": _sign_token(ctx, owner, expires_at),
        "token_type": "Bearer",
        "base_url": ctx.settings.base_url,
        "expires_at": datetime.fromtimestamp(expires_at, timezone.utc).isoformat(),
    }


@router.post("/files/upload", summary="Upload raw bytes with an upload token (fal's Python client)")
async def upload_with_token(request: Request) -> dict:
    ctx = get_ctx(request)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    owner = _verify_token(ctx, token.strip()) if scheme.lower() == "bearer" else None
    if owner is None:
        owner = ctx.keys.owner_for(request.headers.get("authorization"))
    if owner is None:
        raise HTTPException(401, "Missing or invalid upload token", headers={"X-Fal-Error-Type": ErrorType.UNAUTHORIZED})
    data = await read_capped(request, ctx.settings.max_download_bytes)
    stored = await to_thread.run_sync(
        ctx.files.put, owner, data, request.headers.get("content-type", "application/octet-stream"),
        request.headers.get("x-fal-file-name", "file"))
    return {"access_url": ctx.file_url(stored.key), "file_size": stored.size}


@router.post("/storage/upload/multipart", response_model=UploadedFile, summary="Form upload (curl, web page)")
async def upload_multipart(
    request: Request, file: Annotated[UploadFile, File()], owner: Annotated[str, Depends(require_owner)]
) -> UploadedFile:
    ctx = get_ctx(request)
    limit = ctx.settings.max_download_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit)
    stored = await to_thread.run_sync(
        ctx.files.put, owner, data, file.content_type or "application/octet-stream", file.filename or "file")
    return UploadedFile(url=ctx.file_url(stored.key), file_name=stored.file_name, content_type=stored.content_type, file_size=stored.size)


@router.get("/files/{token}/{name}", summary="A stored file", response_class=StreamingResponse)
def get_file(token: str, name: str, request: Request) -> StreamingResponse:
    """Streamed from whichever storage holds it (local files or the object store), never buffered whole."""
    opened = get_ctx(request).storage.open(f"{token}/{name}")
    if opened is None:
        raise HTTPException(404, "File not found", headers={"X-Fal-Error-Type": ErrorType.NOT_FOUND})
    info, chunks = opened
    # Content types of uploads come from clients: never let a stored file run script on this origin.
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "sandbox", "Content-Length": str(info.size)}
    return StreamingResponse(chunks, media_type=info.content_type, headers=headers)
