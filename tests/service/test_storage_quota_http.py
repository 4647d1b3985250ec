"""Per-key storage quotas over HTTP, on local files and on S3 (SeaweedFS), through two API replicas sharing one job
database and one storage: every route that stores a file counts against the key's quota; past it the answer is a
413 in fal's shape and nothing more is stored; other keys are unaffected; the operator sees usage per key."""

from __future__ import annotations

import base64
import uuid

import pytest
from fastapi.testclient import TestClient

from helpers import image_bytes, make_face
from photomaker_server.api.app import create_app
from photomaker_server.jobs.keys import KeyLimits, new_secret
from photomaker_server.settings import APP_ID, Settings

ALICE, BOB = "key-alice", "key-bob"
PUBLIC = "http://testserver"
QUOTA_BYTES, QUOTA_FILES = 3000, 4


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path) -> Settings:
    storage_url = ""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        storage_url = f"s3://photomaker-tests/quota-{uuid.uuid4().hex[:10]}"
    return Settings(data_dir=tmp_path, api_keys=[ALICE, BOB], public_base_url=PUBLIC, storage_url=storage_url,
                    storage_quota_bytes=QUOTA_BYTES, storage_quota_files=QUOTA_FILES)


@pytest.fixture
def replicas(settings):
    """Two API apps on the same settings: two replicas of one deployment (same database, same storage)."""
    with TestClient(create_app(settings, housekeeping=False)) as one, \
            TestClient(create_app(settings, housekeeping=False)) as two:
        yield one, two


def key(k: str) -> dict[str, str]:
    return {"Authorization": f"Key {k}"}


def stored_objects(client: TestClient) -> int:
    """How many client files the storage holds (pending upload records are not files)."""
    storage = client.app.state.ctx.storage
    if hasattr(storage, "root"):
        return sum(1 for p in storage.root.glob("*/*") if not p.name.startswith(".") and not p.parent.name.startswith("."))
    listed = storage._client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)
    return sum(1 for o in listed.get("Contents", []) if not o["Key"][len(storage.prefix):].startswith("_uploads/"))


def assert_quota_refusal(response, what: str) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["error_type"] == "storage_quota_exceeded" and response.headers["x-fal-error-type"] == body["error_type"]
    assert "storage quota exceeded" in body["detail"] and f"PHOTOMAKER_STORAGE_QUOTA_{what.upper()}" in body["detail"]


def multipart(client: TestClient, k: str, size: int):  # noqa: ANN201
    return client.post("/storage/upload/multipart", headers=key(k), files={"file": ("a.bin", b"x" * size)})


def test_every_storing_route_counts_and_past_the_quota_nothing_more_is_stored(replicas):
    one, two = replicas
    # 1. the form upload, on replica one
    assert multipart(one, ALICE, 1000).status_code == 200
    # 2. fal's Python client's flow: a token, then POST /files/upload, on replica two
    token = two.post("/storage/auth/token", headers=key(ALICE)).json()["token"]
    up = two.post("/files/upload", content=b"y" * 1000, headers={"Authorization": f"Bearer {token}",
                                                                 "Content-Type": "application/octet-stream"})
    assert up.status_code == 200, up.text
    # 3. a signed upload URL: a file of the quota from the moment it is handed out, its bytes when PUT
    initiated = one.post("/storage/upload/initiate", headers=key(ALICE),
                         json={"content_type": "application/octet-stream", "file_name": "c.bin"}).json()
    owner = one.app.state.ctx.keys.owner_for(f"Key {ALICE}")
    usage = one.app.state.ctx.store.storage_usage
    assert [(u.files, u.bytes) for u in usage(owner)] == [(3, 2000)]
    assert_quota_refusal(two.put(initiated["upload_url"], content=b"z" * 1001), "bytes")
    assert two.put(initiated["upload_url"], content=b"z" * 900).status_code == 200  # the URL was not used up
    assert [(u.files, u.bytes) for u in usage(owner)] == [(3, 2900)]
    objects = stored_objects(one)
    assert objects == 3

    # Full: each route refuses with a 413 and stores nothing.
    assert_quota_refusal(multipart(two, ALICE, 200), "bytes")
    refused = one.post("/files/upload", content=b"y" * 200, headers={"Authorization": f"Bearer {token}"})
    assert_quota_refusal(refused, "bytes")
    # 4. data URIs stored at submit: the request is refused whole, no job is queued
    photo = image_bytes(make_face(0, size=(64, 64)))
    uri = "data:image/png;base64," + base64.b64encode(photo).decode()
    submitted = two.post(f"/{APP_ID}", headers=key(ALICE), json={"prompt": "a man img", "image_archive_url": uri})
    assert_quota_refusal(submitted, "bytes")
    assert one.app.state.ctx.store.counts().get("queued", 0) == 0
    # 5. one more signed URL fits the file count (4); the next does not
    assert one.post("/storage/upload/initiate", headers=key(ALICE), json={"file_name": "d.bin"}).status_code == 200
    assert_quota_refusal(two.post("/storage/upload/initiate", headers=key(ALICE), json={"file_name": "e.bin"}),
                         "files")
    assert stored_objects(one) == objects
    assert [(u.files, u.bytes) for u in usage(owner)] == [(4, 2900)]

    # Another key is unaffected: its own quota, its own files, data URIs included.
    assert multipart(one, BOB, 1000).status_code == 200
    ok = two.post(f"/{APP_ID}", headers=key(BOB), json={"prompt": "a man img", "image_archive_url": uri})
    assert ok.status_code == 200, ok.text
    bob = one.app.state.ctx.keys.owner_for(f"Key {BOB}")
    assert [(u.files, u.bytes) for u in usage(bob)] == [(2, 1000 + len(photo))]
    assert stored_objects(one) == objects + 2


def test_the_operator_sees_usage_per_key(tmp_path):
    """``photomaker usage`` reads the job database: files and bytes per key, against the quota, named by the key's
    place in the configuration (never the key itself)."""
    import json
    import os
    import subprocess
    import sys

    settings = Settings(data_dir=tmp_path, api_keys=[ALICE, BOB], public_base_url=PUBLIC,
                        storage_quota_bytes=QUOTA_BYTES, storage_quota_files=QUOTA_FILES)
    with TestClient(create_app(settings, housekeeping=False)) as client:
        assert multipart(client, BOB, 700).status_code == 200
        assert multipart(client, BOB, 300).status_code == 200
        assert multipart(client, ALICE, 100).status_code == 200
    env = {**os.environ, "PHOTOMAKER_API_KEYS": f"{ALICE},{BOB}", "PHOTOMAKER_STORAGE_QUOTA_BYTES": str(QUOTA_BYTES),
           "PHOTOMAKER_STORAGE_QUOTA_FILES": str(QUOTA_FILES)}
    done = subprocess.run([sys.executable, "-m", "photomaker_server.cli", "usage", "--data-dir", str(tmp_path),
                           "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["key"], r["files"], r["bytes"]) for r in rows] == [("config-2", 2, 1000), ("config-1", 1, 100)]
    assert rows[0]["max_bytes"] == QUOTA_BYTES and rows[0]["max_files"] == QUOTA_FILES
    assert ALICE not in done.stdout and BOB not in done.stdout


def test_a_managed_key_has_its_own_storage_quota(tmp_path):
    """``keys create/set --storage-quota-bytes/--storage-quota-files``: that key's quota (the API reads it from its
    key cache, so a change applies without a restart); keys without one keep the deployment's default."""
    settings = Settings(data_dir=tmp_path, api_keys=[ALICE], public_base_url=PUBLIC,
                        storage_quota_bytes=QUOTA_BYTES, storage_quota_files=QUOTA_FILES)
    with TestClient(create_app(settings, housekeeping=False)) as client:
        store = client.app.state.ctx.store
        roomy, tight = new_secret(), new_secret()
        store.create_key("roomy", roomy, KeyLimits(storage_quota_bytes=10 * QUOTA_BYTES, storage_quota_files=0))
        store.create_key("tight", tight, KeyLimits(storage_quota_bytes=500))
        client.app.state.ctx.keys.cache.reload()  # what the keys wake-up does
        for _ in range(QUOTA_FILES + 2):  # past the default file count and byte quota: its own apply
            assert multipart(client, roomy, QUOTA_BYTES // 2).status_code == 200
        assert multipart(client, tight, 400).status_code == 200
        refused = multipart(client, tight, 200)
        assert refused.status_code == 413 and "500" in refused.json()["detail"]
        store.set_key_limits("tight", {"storage_quota_bytes": None})  # back to the deployment's default
        client.app.state.ctx.keys.cache.reload()
        assert multipart(client, tight, 200).status_code == 200
        assert multipart(client, ALICE, QUOTA_BYTES + 1).status_code == 413  # a configured key: the default
