"""Request and response shapes of the HTTP API (fal's ``fal-ai/photomaker`` schema plus fal's queue envelopes).

The generation fields and their rules come from ``engine.options.GenerationOptions`` (torch-free), so the API and
the engine can never disagree about what a valid request is.
"""

from __future__ import annotations

from typing import Literal

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..engine.options import GenerationOptions
from ..inputs.fetch import MAX_URL_CHARS

OutputFormat = Literal["png", "jpeg", "webp"]
_URL_HELP = "An http(s) URL, a data: URI, or a URL of this service's storage."


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_url(value: str) -> str:
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in ("http", "https", "data"):
        raise ValueError("must be an http(s) URL or a data: URI")
    if scheme != "data" and len(value) > MAX_URL_CHARS:
        raise ValueError(f"an http(s) URL may be at most {MAX_URL_CHARS} characters long")
    return value


def _check_text(value: str) -> None:
    """Text any store can keep: PostgreSQL's JSON types refuse NUL and unpaired surrogates (JSON allows both)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError("contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode text")


class PhotoMakerInput(GenerationOptions):
    """The input of ``fal-ai/photomaker``; the fields beyond fal's schema are marked as such."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "PhotoMakerInput"})

    image_archive_url: str = Field(
        ..., max_length=64 * 1024 * 1024,
        description="A zip of photos of one person (a single photo works too). " + _URL_HELP,
    )
    initial_image_url: str | None = Field(
        None, max_length=64 * 1024 * 1024, description="Optional image to start from (image-to-image). " + _URL_HELP
    )
    image_urls: list[str] | None = Field(
        None, max_length=64, description="Beyond fal: photos as separate URLs instead of (or besides) the archive."
    )
    output_format: OutputFormat = Field("png", description="Beyond fal's schema: png, jpeg or webp.")
    sync_mode: bool = Field(
        False, description="Return images inline as data URIs in the result instead of storing them."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str):
                _check_text(item)
        return value

    @field_validator("image_archive_url", "initial_image_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("image_urls")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_url(v) for v in value]


class Image(BaseModel):
    url: str
    content_type: str
    file_name: str
    file_size: int
    width: int
    height: int


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")


class PhotoMakerOutput(BaseModel):
    images: list[Image]
    seed: int = Field(description="The seed used; the same seed and settings give the same images.")
    prompt: str = Field(description="The prompt after the style template was applied.")
    timings: dict[str, float] = Field(default_factory=dict)
    demo_model: bool = Field(False, description="True when made by the random-weight demo model.")


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
