"""What only the S3 backend has: object layout, bucket creation, presigned and public URLs, a clear error when
the store is unreachable. (Everything both backends do is in test_storage.py, run against both.)"""

from __future__ import annotations

import secrets
import socket
import uuid

import httpx
import pytest

from photomaker_server.storage import StorageUnavailable, UploadError
from photomaker_server.storage.s3 import S3Storage, parse_s3_url

BASE = "http://127.0.0.1:8000"
SECRET = secrets.token_hex(32).encode()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def storage(s3_env) -> S3Storage:
    return S3Storage(f"s3://photomaker-tests/{unique('s3')}", BASE, secret=SECRET)


def test_parse_s3_url():
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("s3:///prefix", "http://bucket/x", "bucket/x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)


def test_objects_live_under_the_prefix_with_their_content_type(storage, s3_server):
    stored = storage.put(b"\x89PNG", "image/png", "a b.png")
    raw = s3_server.client().get_object(Bucket=storage.bucket, Key=f"{storage.prefix}{stored.key}")
    assert raw["ContentType"] == "image/png" and raw["Body"].read() == b"\x89PNG"
    assert storage.prefix.endswith("/") and stored.key.endswith("/a_b.png")


def test_a_missing_bucket_is_created_on_first_use(s3_env, s3_server):
    bucket = unique("fresh")
    storage = S3Storage(f"s3://{bucket}/p", BASE, secret=SECRET)
    stored = storage.put(b"x", "image/png", "a.png")
    assert s3_server.client().head_object(Bucket=bucket, Key=f"p/{stored.key}")["ContentLength"] == 1
    again = S3Storage(f"s3://{bucket}/p", BASE, secret=SECRET)  # exists now: no second creation needed
    assert again.read(stored.key) == b"x"


def test_a_missing_bucket_without_creation_is_a_clear_error(s3_env):
    bucket = unique("absent")
    storage = S3Storage(f"s3://{bucket}", BASE, secret=SECRET, create_bucket=False)
    with pytest.raises(StorageUnavailable, match=bucket):
        storage.put(b"x", "image/png", "a.png")


def test_an_unreachable_store_is_a_clear_error(monkeypatch, s3_env):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    storage = S3Storage("s3://photomaker-tests/x", BASE, secret=SECRET)
    key = "A" * 32 + "/a.png"
    for call in (lambda: storage.put(b"x", "image/png", "a.png"), lambda: storage.read(key),
                 lambda: storage.info(key), lambda: storage.delete_older_than(60),
                 lambda: storage.create_upload("image/png", "a.png")):
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}"):
            call()
    with pytest.raises(StorageUnavailable):
        storage.accept_upload("B" * 32, "0" * 64, b"x")


def test_presigned_urls(s3_env):
    storage = S3Storage(f"s3://photomaker-tests/{unique('pre')}", BASE, secret=SECRET, presign_ttl_s=600)
    stored = storage.put(b"presigned bytes", "image/png", "a.png")
    url = storage.url_for(stored.key)
    assert url.startswith(s3_env.endpoint) and "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    assert httpx.get(url).content == b"presigned bytes"  # a client needs nothing else to read it
    assert storage.key_from_url(url) == stored.key  # inputs naming it are read from the store, not fetched
    assert storage.key_from_url(f"{BASE}/files/{stored.key}") == stored.key  # the API's route still works
    other_bucket = url.replace("/photomaker-tests/", "/other-bucket/")
    assert storage.key_from_url(other_bucket) is None
    upload_url, file_url = storage.create_upload("image/png", "b.png")
    assert upload_url.startswith(f"{BASE}/storage/upload/"), "uploads still go through the API (one-time, signed)"
    assert "X-Amz-Signature=" in file_url


def test_public_urls(s3_env):
    storage = S3Storage(f"s3://photomaker-tests/{unique('pub')}", BASE, secret=SECRET,
                        public_url="https://cdn.example/pm/")
    stored = storage.put(b"x", "image/png", "a.png")
    assert storage.url_for(stored.key) == f"https://cdn.example/pm/{stored.key}"
    assert storage.url_for(stored.key, "https://api.example") == f"https://cdn.example/pm/{stored.key}"
    assert storage.key_from_url(f"https://cdn.example/pm/{stored.key}?v=1") == stored.key
    assert storage.key_from_url(f"https://cdn.example/other/{stored.key}") is None
    assert storage.key_from_url(f"https://evil.example/pm/{stored.key}") is None
    assert storage.key_from_url("https://cdn.example/pm/../x") is None


def test_the_api_route_is_the_default_url(storage):
    stored = storage.put(b"x", "image/png", "a.png")
    assert storage.url_for(stored.key) == f"{BASE}/files/{stored.key}"
    assert storage.url_for(stored.key, "https://api.example/pm/") == f"https://api.example/pm/files/{stored.key}"
    assert S3Storage("s3://b1x/p", secret=SECRET).url_for(stored.key) == f"/files/{stored.key}"


def test_a_failed_store_gives_the_upload_url_back(storage, monkeypatch):
    """The one-time marker is written before the bytes; if storing them fails the marker goes again, so the
    client can retry the same URL."""
    upload_url, _ = storage.create_upload("image/png", "a.png")
    upload_id, sig = upload_url.rsplit("/", 1)[1].split("?sig=")
    real_store = storage._store

    def broken(*args, **kwargs):
        raise StorageUnavailable("down for a moment")

    monkeypatch.setattr(storage, "_store", broken)
    with pytest.raises(StorageUnavailable):
        storage.accept_upload(upload_id, sig, b"x")
    monkeypatch.setattr(storage, "_store", real_store)
    assert storage.accept_upload(upload_id, sig, b"x").size == 1
    with pytest.raises(UploadError):
        storage.accept_upload(upload_id, sig, b"x")


def test_retention_by_last_modified_keeps_other_prefixes(s3_env, s3_server):
    """delete_older_than only looks under its own prefix (several deployments can share a bucket)."""
    now = [0.0]
    mine = S3Storage(f"s3://photomaker-tests/{unique('mine')}", BASE, secret=SECRET, clock=lambda: now[0])
    theirs = S3Storage(f"s3://photomaker-tests/{unique('theirs')}", BASE, secret=SECRET)
    a, b = mine.put(b"a", "image/png", "a.png"), theirs.put(b"b", "image/png", "b.png")
    last_modified = s3_server.client().head_object(Bucket="photomaker-tests", Key=f"{mine.prefix}{a.key}")["LastModified"]
    now[0] = last_modified.timestamp() + 10
    assert mine.delete_older_than(20) == 0 and mine.read(a.key) == b"a"
    assert mine.delete_older_than(5) == 1 and mine.read(a.key) is None
    assert theirs.read(b.key) == b"b"
