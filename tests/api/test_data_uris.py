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
from photomaker_server.storage.base import StorageUnavailable, StoredFile, checked_token, file_key

PNG = image_bytes(make_face(0, size=(32, 32)))
ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip: a zip by its signature, which is all submit judges


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class MemoryStorage:
    """Only what the submit path may use of FileStorage: put, and delete to undo a failed write. ``fail_at``: the
    put of that many files earlier fails, after writing part of its bytes (as a write cut short may)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        self.puts, self.fail_at, self.deleted = 0, fail_at, []
        self.delete_fails = False

    def put(self, data: bytes, content_type: str, file_name: str, token: str | None = None) -> StoredFile:
        key = file_key(checked_token(token), file_name)
        self.files[key] = (data[: len(data) // 2] if self.puts == self.fail_at else data, content_type, file_name)
        self.puts += 1
        if self.puts - 1 == self.fail_at:
            raise StorageUnavailable("the storage failed mid-write (simulated)")
        return StoredFile(key=key, url=f"http://srv/files/{key}", file_name=key.split("/")[1],
                          content_type=content_type, size=len(data))

    def delete(self, key: str) -> None:
        if self.delete_fails:
            raise StorageUnavailable("the storage is down (simulated)")
        self.deleted.append(key)
        self.files.pop(key, None)


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


class CountingStore:
    """A job store that counts its write transactions by method (what a submit's data URIs cost in transactions)."""

    def __init__(self, store: SQLJobStore) -> None:
        self._store, self.calls = store, []

    def __getattr__(self, name: str):  # noqa: ANN204
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.calls.append(name)
            return attr(*args, **kwargs)

        return call


def test_each_charge_row_names_its_file_from_the_start_in_one_transaction():
    storage = MemoryStorage()
    files = quota_files(storage)
    files.store = counting = CountingStore(files.store)
    payload = {"image_archive_url": uri(ZIP, "application/zip"), "image_urls": [uri(PNG), "https://x.example/a.png"]}
    out = store_data_uris(payload, files, "alice", 1 << 20)
    keys = [out["image_archive_url"].key, out["image_urls"][0].key]
    assert counting.calls == ["charge_files"]  # no settle_file: the keys were chosen before the charge
    assert sorted(storage.files) == sorted(keys)
    # The rows carry the keys (what the unpack budget of a later submit naming these files is read by; a key of
    # no row would be absent).
    assert files.store.declared_unpacked(keys) == dict.fromkeys(keys)


def test_a_write_failing_after_the_charge_leaves_no_charge_and_no_file():
    storage = MemoryStorage(fail_at=1)  # the second file's write fails, half written
    files = quota_files(storage)
    payload = {"image_archive_url": uri(ZIP, "application/zip"), "initial_image_url": uri(PNG)}
    with pytest.raises(StorageUnavailable):
        store_data_uris(payload, files, "alice", 1 << 20)
    assert storage.files == {} and len(storage.deleted) == 2  # the written file and the half-written one
    assert files.store.storage_usage("alice") == []
    assert files.store.declared_unpacked(storage.deleted) == {}


def test_a_file_that_cannot_be_removed_after_a_failed_write_stays_charged():
    storage = MemoryStorage(fail_at=1)
    storage.delete_fails = True
    files = quota_files(storage)
    payload = {"image_archive_url": uri(ZIP, "application/zip"), "initial_image_url": uri(PNG),
               "image_urls": [uri(PNG[:-1])]}
    with pytest.raises(StorageUnavailable, match="mid-write"):  # the write's error, not the removal's
        store_data_uris(payload, files, "alice", 1 << 20)
    # The two files that may be stored still count; the third, never written, does not.
    assert [(u.files, u.bytes) for u in files.store.storage_usage("alice")] == [(2, len(ZIP) + len(PNG))]


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
