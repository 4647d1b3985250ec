"""Data URIs in a request: checked at submit and moved to file storage, so a job row holds keys, not megabytes.

A data URI is the request's own bytes. Kept in the job row, a 45 MB photo became ~60 MB of JSON text in the
database (plus as much again in the WAL), on every submit, before the worker got to refuse it. Here each one is
decoded once, at submit (strict base64, the ``max_data_uri_bytes`` cap), judged by its magic bytes (an image, or
for photo fields a zip), and written to storage with :meth:`FileStorage.put`; the request keeps the file's
storage key (a :class:`~photomaker_server.contract.files.FileRef`), which the worker reads straight from storage. Anything refused is refused with a 422 naming the field, and
nothing of a refused request is stored.

Stored inputs are ordinary stored files: they expire with the retention time (``result_ttl_hours``), like uploads.

The request's unpack budget (``max_request_input_bytes``) is checked here too, by headers only (a zip's central
directory, an image's size), since the bytes are in hand: a request whose data URIs together declare more than the
budget is refused with a 422 before anything is stored, instead of being queued to fail. The worker counts the real
bytes of every input as it inflates them, whatever the headers said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contract.files import FileRef
from ..inputs.archives import ArchiveLimits, declared_unpacked_bytes, is_zip
from ..inputs.budget import over_unpack_budget
from ..inputs.errors import InputError
from ..inputs.data_uri import decode_data_uri, is_data_uri
from ..inputs.images import sniff_image_format
from ..settings import Settings
from .stored_files import NewFile, QuotaStorage

#: Request fields that may hold a URL, and what each must contain.
PHOTO_FIELDS = ("image_archive_url", "image_urls")
IMAGE_FIELDS = ("initial_image_url",)
_IMAGE_TYPES = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp"),
                "GIF": ("image/gif", "gif"), "BMP": ("image/bmp", "bmp"), "TIFF": ("image/tiff", "tiff")}


class DataUriRefused(ValueError):
    """A data URI the request may not carry; ``loc`` is its place in the body (``("image_urls", 2)``)."""

    def __init__(self, loc: tuple[str | int, ...], message: str, kind: str) -> None:
        super().__init__(message)
        self.loc, self.message, self.kind = loc, message, kind

    def detail(self) -> dict[str, Any]:
        """One entry of fal's 422 ``detail`` list."""
        return {"loc": ["body", *self.loc], "msg": self.message, "type": self.kind}


Loc = tuple[str | int, ...]


@dataclass
class _Decoded:
    loc: Loc
    data: bytes
    content_type: str
    file_name: str


@dataclass
class _Distinct:
    """One data URI of the request and every place it appears (the first one names it in refusals)."""

    uri: str
    locs: list[Loc]


def _locations(payload: dict[str, Any]) -> list[tuple[Loc, str]]:
    found: list[tuple[Loc, str]] = []
    for field in ("image_archive_url", "initial_image_url"):
        if is_data_uri(payload.get(field)):
            found.append(((field,), payload[field]))
    for index, url in enumerate(payload.get("image_urls") or []):
        if is_data_uri(url):
            found.append((("image_urls", index), url))
    return found


def _distinct(payload: dict[str, Any]) -> list[_Distinct]:
    """The request's data URIs, each once, in field order. Compared, not hashed: hashing a 2.5 MB string costs a
    millisecond, while two different URIs of the same length nearly always differ in their first bytes."""
    distinct: list[_Distinct] = []
    for loc, uri in _locations(payload):
        for seen in distinct:
            if seen.uri is uri or (len(seen.uri) == len(uri) and seen.uri == uri):
                seen.locs.append(loc)
                break
        else:
            distinct.append(_Distinct(uri, [loc]))
    return distinct


def _decode(loc: Loc, uri: str, max_bytes: int) -> _Decoded:
    """The bytes of one data URI and what they are, judged by their first bytes (nothing is decompressed or
    decoded as an image here: the worker does that once, under its limits)."""
    field = str(loc[0])
    try:
        data = decode_data_uri(uri.strip(), max_bytes).data
    except InputError as exc:
        kind = "data_uri_too_large" if "holds more than" in exc.message else "data_uri_invalid"
        raise DataUriRefused(loc, exc.message, kind) from None
    image = sniff_image_format(data)
    if image is not None:
        content_type, ext = _IMAGE_TYPES[image]
        return _Decoded(loc, data, content_type, f"{field}.{ext}")
    if field in PHOTO_FIELDS and is_zip(data):
        return _Decoded(loc, data, "application/zip", f"{field}.zip")
    wanted = "an image (JPEG, PNG, WebP, GIF, BMP, TIFF)" if field in IMAGE_FIELDS else \
        "a zip archive of photos or a single image (JPEG, PNG, WebP, GIF, BMP, TIFF)"
    raise DataUriRefused(loc, f"the data URI's content is not {wanted} (judged by its first bytes)",
                         "data_uri_content")


@dataclass
class UnpackBudget:
    """What a request's data URIs may declare to unpack to, all together (``max_request_input_bytes``)."""

    max_bytes: int
    archive_limits: ArchiveLimits
    #: Declared by the request's inputs already stored here (``api/input_budget.py``), counted first.
    already: int = 0


def unpack_budget(settings: Settings) -> UnpackBudget:
    return UnpackBudget(settings.max_request_input_bytes, ArchiveLimits.from_settings(settings))


def _check_budget(decoded: list[_Decoded], budget: UnpackBudget) -> None:
    """Refuse the request once its distinct data URIs (each stored once, read once by the worker) declare more than
    the budget, naming the one that crosses it."""
    total = budget.already
    for item in decoded:
        total += declared_unpacked_bytes(item.data, budget.archive_limits) or 0
        if total > budget.max_bytes:
            raise DataUriRefused(item.loc, over_unpack_budget(budget.max_bytes, by_headers=True),
                                 "input_budget_exceeded")


def store_data_uris(
    payload: dict[str, Any], files: QuotaStorage, owner: str, max_bytes: int, budget: UnpackBudget | None = None
) -> dict[str, Any]:
    """``payload`` with every data URI replaced by the :class:`FileRef` (storage key) of its decoded bytes, stored
    for ``owner``.

    All of them are decoded and checked (each, then together against ``budget``), and charged to the owner's storage
    quota together, before the first is stored, so a refused request leaves nothing behind. The same URI twice
    (archive and image_urls) is decoded once and stays one file, as the worker reads it once. Raises
    :class:`DataUriRefused` (the first problem found, in field order) or :class:`~photomaker_server.limits.QuotaExceeded`.

    Blocking (decoding, the quota transaction, the storage writes: S3 is a network call) and safe in any thread:
    async code calls it through ``anyio.to_thread.run_sync``, never on the event loop.
    """
    distinct = _distinct(payload)
    if not distinct:
        return payload
    decoded = [_decode(found.locs[0], found.uri, max_bytes) for found in distinct]
    if budget is not None:
        _check_budget(decoded, budget)
    written = files.put_all(owner, [NewFile(i.data, i.content_type, i.file_name) for i in decoded])
    result = dict(payload)
    if "image_urls" in result:
        result["image_urls"] = list(result["image_urls"])
    for found, stored in zip(distinct, written):
        ref = FileRef.stored(stored.key)
        for loc in found.locs:
            if loc[0] == "image_urls":
                result["image_urls"][loc[1]] = ref
            else:
                result[str(loc[0])] = ref
    return result
