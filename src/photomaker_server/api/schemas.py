"""fal's queue envelopes and the storage flows' shapes. The request and the result themselves are the shared
contract (``contract.request.PhotoMakerInput``, ``contract.result.PhotoMakerOutput``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

class QueueSubmitted(BaseModel):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    queue_position: int


class LogEntry(BaseModel):
    message: str
    level: str
    source: str = "USER"
    timestamp: str


class QueueStatus(BaseModel):
    """fal's status: IN_QUEUE (with queue_position), IN_PROGRESS (with logs) or COMPLETED (failures included)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: str | None = None


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
