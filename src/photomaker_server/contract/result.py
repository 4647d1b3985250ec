"""The result: what a finished request holds, as the worker stores it and as clients see it.

The worker stores each output image by its storage ``key`` (``StoredImage``); whoever hands a result out renders
the ``url`` from the key then (``jobs.results.render_result``), so results follow the deployment's public URL, CDN
or presigning, and the worker never needs the API's address. ``sync_mode`` images carry their data URI in ``url``.
Clients see :class:`PhotoMakerOutput`: fal's shape, every image with its ``url``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _ImageFacts(BaseModel):
    content_type: str
    file_name: str
    file_size: int
    width: int
    height: int


class Image(_ImageFacts):
    """An output image as clients get it (fal's ``Image``)."""

    url: str


class StoredImage(_ImageFacts):
    """An output image as the job database keeps it: a storage key, or (``sync_mode``) the data URI itself."""

    key: str | None = None
    url: str | None = None


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(description="The seed used; the same seed and settings give the same images.")
    prompt: str = Field(description="The prompt after the style template was applied.")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage (inputs, inference, ...).")
    demo_model: bool = Field(False, description="True when made by the random-weight demo model.")
    demo_warning: str | None = Field(None, description="Present (and loud) when demo_model is true.")


class PhotoMakerOutput(_Output):
    """The result of ``fal-ai/photomaker`` as clients get it."""

    images: list[Image]


class StoredOutput(_Output):
    """The result as the worker writes it to the job database."""

    images: list[StoredImage]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
