"""open_storage: the one place that picks local files or S3 from a storage URL."""

from __future__ import annotations

import secrets

import pytest

from photomaker_server.settings import Settings
from photomaker_server.storage import LocalStorage, open_storage, storage_from_settings

SECRET = secrets.token_hex(32).encode()


@pytest.mark.parametrize("url", [None, "", "  "])
def test_no_url_is_the_data_dir(tmp_path, url):
    storage = open_storage(url, data_dir=tmp_path, secret=SECRET)
    assert isinstance(storage, LocalStorage) and storage.root == (tmp_path / "files").resolve()


def test_paths_and_file_urls_are_local(tmp_path):
    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'b'}", f"file://localhost{tmp_path / 'c'}"):
        storage = open_storage(url, data_dir=tmp_path / "unused", secret=SECRET, base_url="http://h:1")
        assert isinstance(storage, LocalStorage) and storage.root.parent == tmp_path.resolve()
        stored = storage.put(b"x", "image/png", "a.png")
        assert stored.url == f"http://h:1/files/{stored.key}"
    assert not (tmp_path / "unused").exists()


def test_s3_urls_are_s3(s3_env, tmp_path):
    from photomaker_server.storage.s3 import S3Storage

    storage = open_storage("s3://photomaker-tests/factory", data_dir=tmp_path, secret=SECRET, max_upload_bytes=3,
                           presign_ttl_s=60)
    assert isinstance(storage, S3Storage) and (storage.bucket, storage.prefix) == ("photomaker-tests", "factory/")
    assert storage.max_upload_bytes == 3 and storage.presign_ttl_s == 60
    assert not (tmp_path / "files").exists(), "S3 storage writes nothing to the data dir"


@pytest.mark.parametrize("url", ["http://example.com/x", "gs://bucket/x", "file://otherhost/x", "s3:///nobucket"])
def test_unsupported_urls_are_refused(tmp_path, url):
    with pytest.raises(ValueError):
        open_storage(url, data_dir=tmp_path, secret=SECRET)


def test_cdn_and_presigned_urls_need_s3(tmp_path):
    with pytest.raises(ValueError, match="S3"):
        open_storage(None, data_dir=tmp_path, secret=SECRET, presign_ttl_s=60)
    with pytest.raises(ValueError, match="S3"):
        open_storage(None, data_dir=tmp_path, secret=SECRET, public_url="https://cdn.example")


def test_from_settings(tmp_path):
    settings = Settings(data_dir=tmp_path, public_base_url="https://api.example/pm", max_download_bytes=10)
    storage = storage_from_settings(settings, SECRET)
    assert isinstance(storage, LocalStorage) and storage.max_upload_bytes == 10
    assert storage.url_for("A" * 32 + "/a.png") == f"https://api.example/pm/files/{'A' * 32}/a.png"
    assert not (tmp_path / "upload-secret").exists(), "the secret is the deployment's, not a data dir file"
    with pytest.raises(ValueError):  # CDN/presigned URLs need S3
        storage_from_settings(settings.model_copy(update={"storage_presign_seconds": 60}), SECRET)
