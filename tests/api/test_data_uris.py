"""Data URIs at submit (``api.data_uris``): decoded, judged by magic bytes, moved to storage — or refused whole."""

from __future__ import annotations

import base64
import io
import os
import zipfile

import pytest

from helpers import image_bytes, make_face
from photomaker_server.contract.files import FileRef
from photomaker_server.api.data_uris import DataUriRefused, UnpackBudget, store_data_uris
from photomaker_server.api.stored_files import QuotaStorage
from photomaker_server.inputs.archives import ArchiveLimits
from photomaker_server.jobs.sql.store import SQLJobStore
from photomaker_server.limits import DeploymentLimits, QuotaExceeded
from photomaker_server.settings import Settings
from photomaker_server.storage.base import StoredFile

PNG = image_bytes(make_face(0, size=(32, 32)))
ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip: a zip by its signature, which is all submit judges


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class MemoryStorage:
    """Only what the submit path may use of FileStorage: put."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}

    def put(self, data: bytes, content_type: str, file_name: str) -> StoredFile:
        key = f"k{len(self.files)}/{file_name}"
        self.files[key] = (data, content_type, file_name)
        return StoredFile(key=key, url=f"http://srv/files/{key}", file_name=file_name, content_type=content_type,
                          size=len(data))


def quota_files(storage: MemoryStorage, **quota: int) -> QuotaStorage:
    """``storage`` behind the quota accounting the API uses, on an in-memory job database."""
    limits = DeploymentLimits(Settings(**quota))
    return QuotaStorage(SQLJobStore(":memory:"), storage, limits, retention_s=3600)


def test_every_data_uri_becomes_a_storage_key():
    storage = MemoryStorage()
    payload = {"prompt": "p", "image_archive_url": uri(ZIP, "application/zip"), "initial_image_url": uri(PNG),
               "image_urls": ["https://example.com/a.png", uri(PNG)]}
    out = store_data_uris(payload, quota_files(storage), "alice", 1 << 20)
    assert out["prompt"] == "p" and out["image_urls"][0] == "https://example.com/a.png"
    refs = (out["image_archive_url"], out["initial_image_url"], out["image_urls"][1])
    assert all(isinstance(v, FileRef) and v.key in storage.files for v in refs)
    # The same URI twice is one file (the worker de-duplicates the archive and image_urls by URL).
    assert out["initial_image_url"] == out["image_urls"][1] and len(storage.files) == 2
    assert sorted((ct, data == PNG) for data, ct, _ in storage.files.values()) == [("application/zip", False),
                                                                                  ("image/png", True)]
    assert payload["image_urls"][1].startswith("data:")  # the input is not modified


@pytest.mark.parametrize("payload, loc, kind", [
    ({"image_archive_url": "data:image/png;base64,***"}, ("image_archive_url",), "data_uri_invalid"),
    ({"image_archive_url": uri(b"hello")}, ("image_archive_url",), "data_uri_content"),
    ({"image_archive_url": "data:,"}, ("image_archive_url",), "data_uri_invalid"),
    ({"image_archive_url": uri(PNG), "initial_image_url": uri(ZIP)}, ("initial_image_url",), "data_uri_content"),
    ({"image_archive_url": uri(PNG), "image_urls": [uri(PNG), uri(b"%PDF-1.4")]}, ("image_urls", 1),
     "data_uri_content"),
    ({"image_archive_url": uri(PNG + bytes(2000))}, ("image_archive_url",), "data_uri_too_large"),
])
def test_refusals_name_the_field_and_store_nothing(payload, loc, kind):
    storage = MemoryStorage()
    with pytest.raises(DataUriRefused) as info:
        store_data_uris(payload, quota_files(storage), "alice", 2000)
    assert info.value.loc == loc and info.value.kind == kind
    assert info.value.detail() == {"loc": ["body", *loc], "msg": info.value.message, "type": kind}
    assert storage.files == {}


def test_no_data_uri_no_storage():
    storage = MemoryStorage()
    payload = {"image_archive_url": "https://example.com/a.zip"}
    assert store_data_uris(payload, quota_files(storage), "alice", 10) is payload and not storage.files


def test_a_request_over_the_storage_quota_stores_none_of_its_data_uris():
    storage = MemoryStorage()
    files = quota_files(storage, storage_quota_bytes=len(PNG) + 10)
    payload = {"image_archive_url": uri(ZIP, "application/zip"), "initial_image_url": uri(PNG)}
    with pytest.raises(QuotaExceeded) as info:
        store_data_uris(payload, files, "alice", 1 << 20)
    assert info.value.what == "bytes" and storage.files == {}
    assert files.store.storage_usage("alice") == []
    # Within the quota (another key, or this one with less), stored and counted.
    store_data_uris({"initial_image_url": uri(PNG)}, files, "alice", 1 << 20)
    assert [(u.files, u.bytes) for u in files.store.storage_usage("alice")] == [(1, len(PNG))]


# --- the request's unpack budget, by headers, at submit -------------------------------------------------------------

MiB = 1 << 20


def _archive(*entries: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _photo_of(size: int) -> bytes:
    """Incompressible bytes that start like a PNG: what a photo's headers declare is what it unpacks to."""
    return PNG[:16] + os.urandom(size - 16)


BUDGET = UnpackBudget(max_bytes=3 * MiB, archive_limits=ArchiveLimits())


def test_data_uris_declaring_more_than_the_budget_together_are_refused_before_anything_is_stored():
    storage = MemoryStorage()
    first, second = (_archive(("a.png", _photo_of(MiB)), ("b.png", _photo_of(MiB))) for _ in range(2))
    payload = {"image_archive_url": uri(first, "application/zip"), "image_urls": [uri(second, "application/zip")]}
    with pytest.raises(DataUriRefused) as info:
        store_data_uris(payload, quota_files(storage), "alice", 8 * MiB, BUDGET)
    assert info.value.loc == ("image_urls", 0) and info.value.kind == "input_budget_exceeded"
    assert "unpack to more than 3 MB in all" in info.value.message and storage.files == {}
    # Each alone fits; the same data URI twice is one file, read once.
    assert store_data_uris({"image_archive_url": uri(first, "application/zip")}, quota_files(storage), "alice",
                           8 * MiB, BUDGET)
    same = {"image_archive_url": uri(first, "application/zip"), "image_urls": [uri(first, "application/zip")] * 5}
    assert store_data_uris(same, quota_files(MemoryStorage()), "alice", 8 * MiB, BUDGET)


def test_what_the_headers_cannot_vouch_for_is_left_to_the_worker():
    """Entries the worker skips unread (not photos by name, junk, nested archives) do not count, and an archive that
    already breaks a per-archive limit by its headers is left to the worker's precise refusal."""
    storage = MemoryStorage()
    skipped = _archive(("a.png", PNG), ("video.mp4", os.urandom(4 * MiB)), ("__MACOSX/._b.png", os.urandom(MiB)))
    too_big_entry = _archive(("big.png", _photo_of(4 * MiB)))
    payload = {"image_archive_url": uri(skipped, "application/zip"),
               "image_urls": [uri(too_big_entry, "application/zip")]}
    limits = UnpackBudget(3 * MiB, ArchiveLimits(max_entry_bytes=2 * MiB))
    out = store_data_uris(payload, quota_files(storage), "alice", 8 * MiB, limits)
    assert len(storage.files) == 2 and out["image_urls"][0].key in storage.files


def test_single_images_count_their_size():
    payload = {"image_archive_url": uri(_photo_of(2 * MiB)), "initial_image_url": uri(_photo_of(2 * MiB))}
    with pytest.raises(DataUriRefused) as info:
        store_data_uris(payload, quota_files(MemoryStorage()), "alice", 8 * MiB, BUDGET)
    assert info.value.loc == ("initial_image_url",)
