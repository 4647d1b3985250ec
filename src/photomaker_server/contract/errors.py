"""The error vocabulary: every ``error_type`` this service answers (fal's ``X-Fal-Error-Type`` and the body's
``error_type``), each with its HTTP status, in one place.

Torch- and web-framework-free, so the job store (a failed job's ``error_type``), the worker, the engine's errors and
the API all name errors with the same values and the API answers each with the same status wherever it occurs.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["FIELD_ERRORS", "ErrorType", "failure_body"]


class ErrorType(enum.StrEnum):
    """fal's error types and ours; :attr:`http_status` is the status the API answers with."""

    # a finished request's outcome (stored with the job)
    REQUEST_TIMEOUT = "request_timeout"
    CLIENT_CANCELLED = "client_cancelled"
    RUNNER_SERVER_ERROR = "runner_server_error"
    INTERNAL_ERROR = "internal_error"
    INPUT_ERROR = "input_error"
    NO_FACE_DETECTED = "no_face_detected"
    WEIGHTS_UNAVAILABLE = "weights_unavailable"
    # answers of the API
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    REQUEST_IN_PROGRESS = "request_in_progress"
    REQUEST_TOO_LARGE = "request_too_large"
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    QUEUE_FULL = "queue_full"
    SERVICE_UNAVAILABLE = "service_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    INVALID_LOGIN_LINK = "invalid_login_link"
    # a signed upload URL refused (``storage.base.UploadError.reason``)
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    USED = "used"
    TOO_LARGE = "too_large"

    @property
    def http_status(self) -> int:
        return _STATUS[self]

    @classmethod
    def of(cls, value: str | None, default: ErrorType | None = None) -> ErrorType:
        """``value`` as an error type; unknown or absent values (a row written by something else): ``default``,
        else ``internal_error``."""
        try:
            return cls(value)  # type: ignore[arg-type]
        except ValueError:
            return default or cls.INTERNAL_ERROR


_STATUS: dict[ErrorType, int] = {
    ErrorType.REQUEST_TIMEOUT: 504,
    ErrorType.CLIENT_CANCELLED: 499,
    ErrorType.RUNNER_SERVER_ERROR: 500,
    ErrorType.INTERNAL_ERROR: 500,
    ErrorType.INPUT_ERROR: 422,
    ErrorType.NO_FACE_DETECTED: 422,
    ErrorType.WEIGHTS_UNAVAILABLE: 503,
    ErrorType.BAD_REQUEST: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.NOT_FOUND: 404,
    ErrorType.CONFLICT: 409,
    ErrorType.REQUEST_IN_PROGRESS: 400,
    ErrorType.REQUEST_TOO_LARGE: 413,
    ErrorType.STORAGE_QUOTA_EXCEEDED: 413,  # not 429: fal's clients retry a 429 at once; a quota frees up slowly
    ErrorType.RATE_LIMITED: 429,
    ErrorType.TOO_MANY_CONNECTIONS: 429,
    ErrorType.QUEUE_FULL: 503,
    ErrorType.SERVICE_UNAVAILABLE: 503,
    ErrorType.STORAGE_UNAVAILABLE: 503,
    ErrorType.SERVER_SHUTTING_DOWN: 503,
    ErrorType.INVALID_LOGIN_LINK: 403,
    ErrorType.BAD_SIGNATURE: 403,
    ErrorType.EXPIRED: 410,
    ErrorType.USED: 409,
    ErrorType.TOO_LARGE: 413,
}
assert set(_STATUS) == set(ErrorType), "every error type has its status"

#: Errors of a finished request that belong to one input field: answered in fal's validation shape
#: (``{"detail": [{"loc": ["body", field], "msg", "type"}], "error_type"}``), as fal reports its content errors.
FIELD_ERRORS: dict[ErrorType, str] = {ErrorType.NO_FACE_DETECTED: "image_archive_url"}


def failure_body(detail: str, error_type: ErrorType) -> dict[str, Any]:
    """fal's error body for ``detail``: ``{"detail": "...", "error_type": "..."}``, or the validation shape for an
    error that belongs to one input field. What the result endpoint, ``/run`` and webhooks all answer for a failed
    request."""
    field = FIELD_ERRORS.get(error_type)
    if field is not None:
        return {"detail": [{"loc": ["body", field], "msg": detail, "type": error_type.value}],
                "error_type": error_type.value}
    return {"detail": detail, "error_type": error_type.value}
