"""fal's error bodies: ``{"detail": [...]}`` (422, validation) and ``{"detail": "...", "error_type": "..."}``."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..contract.errors import ErrorType, failure_body
from ..contract.request import error_details
from ..jobs.keys import KeyRevoked, LimitExceeded, QueueFull
from ..jobs.records import StoreUnavailable
from ..limits import QuotaExceeded
from ..storage.base import StorageUnavailable
from .db_wait import UNAVAILABLE_MARK

def error_response(error_type: ErrorType, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """fal's error answer (``contract.errors.failure_body``) with the status of ``error_type`` and its
    ``X-Fal-Error-Type`` header."""
    return JSONResponse(failure_body(detail, error_type), status_code=error_type.http_status,
                        headers={"X-Fal-Error-Type": error_type.value, **(headers or {})})


def validation_details(exc: ValidationError, prefix: tuple[str, ...] = ("body",)) -> list[dict[str, Any]]:
    return [{**d, "loc": [*prefix, *d["loc"]]} for d in error_details(exc)]


def validation_response(exc: ValidationError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": validation_details(exc)}, status_code=422, headers=headers)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _body_detail(request: Request, error: dict[str, Any]) -> dict[str, Any] | None:
    """A clearer entry for errors about the body as a whole (not JSON, not an object, empty), else None.

    FastAPI parses only JSON content types as JSON: ``curl -d '{...}'`` without ``-H`` sends form encoding, and the
    plain "Input should be a valid dictionary" would hide that the header is what is wrong.
    """
    loc = tuple(error["loc"])
    if not loc or loc[0] != "body":
        return None
    content_type = request.headers.get("content-type")
    if len(loc) == 1 and content_type and not _is_json(content_type):
        media = content_type.split(";", 1)[0].strip()
        return {"loc": ["body"], "msg": f"the body was sent as {media!r}; send the body with Content-Type: "
                "application/json", "type": "content_type"}
    if loc == ("body",) and error["type"] == "missing":
        return {"loc": ["body"], "msg": "the request body is empty; send a JSON object with Content-Type: "
                "application/json", "type": "missing"}
    if loc == ("body",) and error["type"] in ("dict_type", "model_attributes_type"):
        kind = type(error.get("input")).__name__
        return {"loc": ["body"], "msg": f"the request body must be a JSON object, not {_JSON_NAMES.get(kind, kind)}",
                "type": "dict_type"}
    if error["type"] == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        position = loc[1] if len(loc) > 1 else "?"
        return {"loc": ["body"], "msg": f"the body is not valid JSON ({reason} at character {position})".replace(
            " ( at", " (at"), "type": "json_invalid"}
    return None


_JSON_NAMES = {"list": "an array", "str": "a string", "int": "a number", "float": "a number", "bool": "a boolean",
               "NoneType": "null", "bytes": "raw bytes"}


async def _request_validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = []
    for error in exc.errors():
        entry = _body_detail(request, error)
        details.append(entry or {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]})
    return JSONResponse({"detail": details}, status_code=422)


async def _http_exception_handler(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    fallback = ErrorType.BAD_REQUEST if exc.status_code < 500 else ErrorType.INTERNAL_ERROR
    error_type = ErrorType.of(headers.get("X-Fal-Error-Type"), fallback)
    headers["X-Fal-Error-Type"] = error_type.value
    detail = exc.detail if isinstance(exc.detail, (str, list)) else str(exc.detail)
    body: dict[str, Any] = {"detail": detail}
    if isinstance(detail, str):
        body["error_type"] = error_type.value
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


#: Seconds a client should wait before retrying while the database or the file storage is unreachable.
RETRY_AFTER_S = 2


async def _storage_unavailable_handler(request: Request, exc: StorageUnavailable) -> JSONResponse:
    return error_response(ErrorType.STORAGE_UNAVAILABLE, f"File storage is unavailable: {exc}",
                          {"Retry-After": str(RETRY_AFTER_S)})


async def _store_unavailable_handler(request: Request, exc: StoreUnavailable) -> JSONResponse:
    """The job database is down or restarting: a 503, never a 500. Accepted jobs are safe in the database; the
    request that got this answer was not accepted. Marked in the request's state, so that ``db_wait`` can hold
    it back and run the request again once the database is back."""
    setattr(request.state, UNAVAILABLE_MARK, True)
    return error_response(ErrorType.SERVICE_UNAVAILABLE, "The job database is unreachable; retry shortly",
                          {"Retry-After": str(RETRY_AFTER_S)})


async def _quota_exceeded_handler(request: Request, exc: QuotaExceeded) -> JSONResponse:
    """413, not 429: fal's clients retry a 429 at once, and a full quota only frees up as files expire."""
    return error_response(ErrorType.STORAGE_QUOTA_EXCEEDED, exc.message)


async def _client_disconnect_handler(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client went away (or was cut off by a body deadline, ``http_server.py``) while sending its body: nobody is
    left to answer, and it is no server error worth a traceback."""
    return error_response(ErrorType.CLIENT_CANCELLED, "Client disconnected")
async def _limit_exceeded_handler(request: Request, exc: LimitExceeded) -> JSONResponse:
    """A key's limit (429) or the deployment's queue cap (503): fal's error body naming the limit, with
    Retry-After. Nothing was stored."""
    error_type = ErrorType.QUEUE_FULL if isinstance(exc, QueueFull) else ErrorType.RATE_LIMITED
    return error_response(error_type, exc.detail, {"Retry-After": str(exc.retry_after_s)})


async def _revoked_handler(request: Request, exc: KeyRevoked) -> JSONResponse:
    """A key revoked between its (cached) check and the submit's transaction: the same 401 as afterwards."""
    return error_response(ErrorType.UNAUTHORIZED, "Missing or invalid API key: send 'Authorization: Key <key>'")


def install(app) -> None:  # noqa: ANN001
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable_handler)
    app.add_exception_handler(StoreUnavailable, _store_unavailable_handler)
    app.add_exception_handler(QuotaExceeded, _quota_exceeded_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)
    app.add_exception_handler(LimitExceeded, _limit_exceeded_handler)
    app.add_exception_handler(KeyRevoked, _revoked_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
