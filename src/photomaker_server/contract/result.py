"""The result: what a finished request holds, as the worker stores it and as clients see it.

The worker stores each output image as a :class:`~.files.FileRef` (``StoredImage.file``): by its storage key, or
for ``sync_mode`` as its data URI. :func:`render_output` is the one place a stored output becomes what clients see
(:class:`PhotoMakerOutput`, fal's shape, every image with its ``url``): the result endpoint, ``/run``, and webhooks
all answer with it, rendering keys for the public URL of the replica that answers (results follow the deployment's
public URL, CDN or presigning, and the worker never needs the API's address).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from .files import FileRef

#: A storage key → the URL a client fetches it from (e.g. ``lambda key: storage.url_for(key, base_url)``).
UrlRenderer = Callable[[str], str]


class _ImageFacts(BaseModel):
    model_config = ConfigDict(extra="forbid")

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

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: FileRef

    def render(self, url_for: UrlRenderer) -> Image:
        url = url_for(self.file.key) if self.file.key is not None else self.file.url
        return Image(url=url or "", **self.model_dump(exclude={"file"}))


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
    """The result as the worker writes it to the job database (JSON; read back with ``model_validate_json``)."""

    images: list[StoredImage]

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    def keys(self) -> list[str]:
        """The storage keys of its images (what the housekeeper deletes with the job)."""
        return [image.file.key for image in self.images if image.file.key is not None]


def render_output(output: StoredOutput, url_for: UrlRenderer) -> PhotoMakerOutput:
    """The one renderer: a stored output as clients see it, each stored image's URL rendered from its key by
    ``url_for`` (the answering replica's public URL); data URIs and URLs are shown as they are."""
    return PhotoMakerOutput(
        images=[image.render(url_for) for image in output.images],
        **output.model_dump(exclude={"images"}),
    )
