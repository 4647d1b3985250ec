"""fal's error bodies: ``{"detail": [...]}`` (422, validation) and ``{"detail": "...", "error_type": "..."}``."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..engine.options import error_details
from ..storage.base import StorageUnavailable

#: HTTP status for each error_type a finished request can carry.
ERROR_STATUS = {
    "request_timeout": 504,
    "client_cancelled": 499,
    "runner_server_error": 500,
    "internal_error": 500,
    "bad_request": 400,
    "input_error": 422,
    "weights_unavailable": 503,
}


def error_response(status: int, detail: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "error_type": error_type},
        status_code=status,
        headers={"X-Fal-Error-Type": error_type, **(headers or {})},
    )


def validation_details(exc: ValidationError, prefix: tuple[str, ...] = ("body",)) -> list[dict[str, Any]]:
    return [{**d, "loc": [*prefix, *d["loc"]]} for d in error_details(exc)]


def validation_response(exc: ValidationError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": validation_details(exc)}, status_code=422, headers=headers)


async def _request_validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = []
    for error in exc.errors():
        details.append({"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]})
    return JSONResponse({"detail": details}, status_code=422)


async def _http_exception_handler(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    error_type = headers.get("X-Fal-Error-Type", "bad_request" if exc.status_code < 500 else "internal_error")
    headers["X-Fal-Error-Type"] = error_type
    detail = exc.detail if isinstance(exc.detail, (str, list)) else str(exc.detail)
    body: dict[str, Any] = {"detail": detail}
    if isinstance(detail, str):
        body["error_type"] = error_type
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _storage_unavailable_handler(request: Request, exc: StorageUnavailable) -> JSONResponse:
    return error_response(503, f"File storage is unavailable: {exc}", "storage_unavailable")


def install(app) -> None:  # noqa: ANN001
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(StorageUnavailable, _storage_unavailable_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
