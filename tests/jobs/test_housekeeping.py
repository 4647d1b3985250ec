"""Retention: finished requests older than the TTL are deleted together with their output files."""

from __future__ import annotations

import os
import secrets
import uuid

from helpers import stored_request, stored_output
from photomaker_server.jobs.housekeeping import Housekeeper
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.settings import Settings
from photomaker_server.storage.local import LocalStorage

SECRET = secrets.token_hex(32).encode()


def test_cleanup_removes_old_results_and_their_files(tmp_path):
    now = [1_000_000.0]
    settings = Settings(data_dir=tmp_path, result_ttl_hours=1)
    store = SQLJobStore(settings.db_path, clock=lambda: now[0])
    storage = LocalStorage(settings.files_dir, settings.base_url, secret=SECRET)
    keeper = Housekeeper(settings, store, storage)

    def finished_job(legacy: bool = False) -> tuple[str, str]:
        job = store.submit("owner", "fal-ai/photomaker", stored_request())
        store.claim("w", 30)
        stored = storage.put(b"png bytes", "image/png", "out.png")
        # results stored before keys existed name their files by URL (migration 0006 keeps that URL)
        output = stored_output(urls=(stored.url,)) if legacy else stored_output(stored.key)
        store.complete(job.id, "w", output)
        return job.id, stored.key

    old_job, old_file = finished_job()
    legacy_job, legacy_file = finished_job(legacy=True)
    now[0] += 2 * 3600  # two hours later: past the one-hour TTL
    new_job, new_file = finished_job()

    old_upload = storage.put(b"an uploaded zip", "application/zip", "faces.zip")
    for path in storage.path_for(old_upload.key).parent.iterdir():  # uploaded two hours ago
        os.utime(path, (now[0] - 2 * 3600, now[0] - 2 * 3600))
    fresh_upload = storage.put(b"a fresh zip", "application/zip", "faces.zip")

    assert keeper.cleanup() == 2
    assert store.get(old_job) is None and storage.read(old_file) is None
    assert store.get(legacy_job) is None and storage.read(legacy_file) is None
    assert store.get(new_job) is not None and storage.read(new_file) == b"png bytes"
    assert storage.read(old_upload.key) is None, "uploads nobody's result names expire with the TTL too"
    assert storage.read(fresh_upload.key) == b"a fresh zip"


def test_cleanup_on_s3_deletes_outputs_by_key(tmp_path, s3_env):
    from photomaker_server.storage.s3 import S3Storage

    now = [1_000_000.0]
    settings = Settings(data_dir=tmp_path, result_ttl_hours=1)
    store = SQLJobStore(settings.db_path, clock=lambda: now[0])
    storage = S3Storage(f"s3://photomaker-tests/hk-{uuid.uuid4().hex[:10]}", settings.base_url, secret=SECRET)
    keeper = Housekeeper(settings, store, storage)
    job = store.submit("owner", "fal-ai/photomaker", stored_request())
    store.claim("w", 30)
    stored = storage.put(b"png bytes", "image/png", "out.png")
    kept = storage.put(b"an upload", "image/png", "in.png")
    store.complete(job.id, "w", stored_output(stored.key, seed=1))
    now[0] += 2 * 3600
    assert keeper.cleanup() == 1
    assert store.get(job.id) is None and storage.read(stored.key) is None
    assert storage.read(kept.key) == b"an upload", "written just now (LastModified): kept"
    store.close()
