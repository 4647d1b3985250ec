"""fal's queue envelopes, error bodies and the storage flows' shapes: what the routes answer, declared in the
OpenAPI document (``responses=``) and built by the handlers from these very models. The request and the result
themselves are the shared contract (``contract.request.PhotoMakerInput``, ``contract.result.PhotoMakerOutput``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..contract.errors import ErrorType

class QueueSubmitted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    queue_position: int


class LogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    level: str
    source: str = "USER"
    timestamp: str


class QueueStatus(BaseModel):
    """fal's status: IN_QUEUE (with queue_position), IN_PROGRESS (with logs) or COMPLETED (failures included)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: ErrorType | None = None


class CancelAnswer(BaseModel):
    """The cancel answer: 202 ``CANCELLATION_REQUESTED`` (removed from the queue, or the worker stops at its next
    step), 400 ``ALREADY_COMPLETED``."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]


class ValidationIssue(BaseModel):
    """One problem of a refused request (fal's 422 ``detail`` entries): where (``["body", "prompt"]``), what, which
    kind."""

    model_config = ConfigDict(extra="forbid")

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """fal's error answer: ``{"detail": "...", "error_type": "..."}``, or for a request refused field by field (422,
    and a finished request whose error belongs to one field, e.g. ``no_face_detected``) ``detail`` lists the
    problems. ``error_type`` is also sent as the ``X-Fal-Error-Type`` header."""

    model_config = ConfigDict(extra="forbid")

    detail: str | list[ValidationIssue]
    error_type: ErrorType | None = None


_DESCRIPTIONS = {
    400: "Bad request (a header or query parameter), or the request is not finished yet (request_in_progress)",
    401: "Missing or invalid API key",
    404: "No such request for this key (requests belong to the key that made them)",
    413: "The body or a stored file is too large, or the key's storage quota is full",
    422: "The request is not valid: each problem names its field",
    429: "A limit of this key (rate, queued requests, open connections); see Retry-After",
    499: "Cancelled (by the client, or it went away)",
    500: "The request failed on the server (runner_server_error, internal_error)",
    503: "The job database, the file storage or the model is unavailable, or the queue is full; see Retry-After",
    504: "The request was not started within its X-Fal-Request-Timeout",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status answered with :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}


class UploadInitiate(BaseModel):
    content_type: str = "application/octet-stream"
    file_name: str = "file"


class UploadInitiated(BaseModel):
    upload_url: str
    file_url: str


class UploadedFile(BaseModel):
    url: str
    file_name: str
    content_type: str
    file_size: int
