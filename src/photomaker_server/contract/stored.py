"""``StoredRequest``: the request as the job database keeps it, validated once at submit.

The API validates a client's :class:`~.request.PhotoMakerInput` with the deployment's rules, stores its data URIs
as files, and resolves every file field into a :class:`~.files.FileRef` (a key of our storage, or an outside URL).
That is what the job row holds (JSON), and what the worker reads back with ``model_validate_json``: the shape is
checked, the deployment's rules are not applied again (a trigger word changed while the request waited does not
turn an accepted request into a failure), and nobody recognises our own URLs again. The engine runs on it as it is
(it is :class:`~.request.GenerationFields`). File fields keep fal's names, so a message about one names the field the
client sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ConfigDict, Field

from .files import FileRef
from .request import GenerationFields, OutputFormat, PhotoMakerInput, PhotoMakerVersion

__all__ = ["FILE_FIELDS", "StoredRequest", "stored_request"]

#: The request's file fields (each a URL in the request, a :class:`FileRef` once stored).
FILE_FIELDS = ("image_archive_url", "initial_image_url", "image_urls")


class StoredRequest(GenerationFields):
    """A validated request with its files as references; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Always set at submit (the deployment's default filled in), so the stored request names the version it runs.
    photomaker_version: PhotoMakerVersion = "v1"
    image_archive_url: FileRef
    initial_image_url: FileRef | None = None
    image_urls: list[FileRef] | None = Field(None, max_length=64)
    output_format: OutputFormat = "png"
    sync_mode: bool = False

    def to_json(self) -> str:
        """The job row's form (``model_validate_json`` reads it back)."""
        return self.model_dump_json(exclude_none=True)

    def photo_refs(self) -> list[tuple[str, FileRef]]:
        """(field, reference) of every photo input, in the order the worker reads them."""
        return [("image_archive_url", self.image_archive_url), *(("image_urls", r) for r in self.image_urls or [])]


def stored_request(
    request: PhotoMakerInput, files: Mapping[str, Any], own_key: Callable[[str], str | None]
) -> StoredRequest:
    """``request`` as stored: its file fields taken from ``files`` (the request's file fields, where data URIs were
    already replaced by the :class:`FileRef` of their stored bytes), each URL of this service's own storage
    (``own_key``: the storage's URL recognition) as its key, every other URL as it is."""

    def ref(value: str | FileRef) -> FileRef:
        if isinstance(value, FileRef):
            return value
        key = own_key(value)
        return FileRef.stored(key) if key is not None else FileRef.outside(value)

    fields = {name: getattr(request, name) for name in GenerationFields.model_fields}
    initial = files.get("initial_image_url")
    images = files.get("image_urls")
    return StoredRequest(
        **fields,
        image_archive_url=ref(files["image_archive_url"]),
        initial_image_url=None if initial is None else ref(initial),
        image_urls=None if images is None else [ref(v) for v in images],
        output_format=request.output_format,
        sync_mode=request.sync_mode,
    )
