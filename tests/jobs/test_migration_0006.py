"""Migration 0006 on SQLite and PostgreSQL: rows written in the shapes before typed rows (request file fields as URL
strings, output images with a top-level ``key`` or ``url``) are read by today's store as typed objects; downgrading
writes the old shapes back."""

from __future__ import annotations

import importlib.util
import json

import sqlalchemy as sa
from alembic import command

from photomaker_server.contract.files import FileRef
from photomaker_server.jobs.records import JobStatus
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.jobs.sql.connect import database_url
from photomaker_server.jobs.sql.schema_version import SCRIPT_LOCATION, _config, current_revision, upgrade_database

DATA_URI = "data:image/png;base64,iVBORw0KGgo="
OLD_REQUEST = {"prompt": "a photo of a man img", "image_archive_url": "https://example.com/me.zip",
               "initial_image_url": DATA_URI, "image_urls": ["https://example.com/a.png", "http://h/files/t/b.png"],
               "num_images": 2, "photomaker_version": "v2", "output_format": "webp", "sync_mode": True}
FACTS = {"content_type": "image/png", "file_name": "x.png", "file_size": 3, "width": 8, "height": 8}
OLD_RESULT = {"images": [{"key": "tok/a.png", **FACTS}, {"url": DATA_URI, **FACTS},
                         {"url": "http://127.0.0.1:8000/files/old/c.png", **FACTS}],
              "seed": 5, "prompt": "a photo of a man img, film", "timings": {"total": 1.5}, "demo_model": True,
              "demo_warning": "noise"}


def _engine(db) -> sa.Engine:  # noqa: ANN001
    return sa.create_engine(database_url(db), poolclass=sa.pool.NullPool)


def _insert(db, job_id: str, request, result, status: str = "completed") -> None:  # noqa: ANN001
    engine = _engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO jobs (id, seq, owner, app, input, status, priority, created_at, attempts, max_attempts,"
            " cancel_requested, result, turn) VALUES (:id, :seq, 'alice', 'fal-ai/photomaker', :input, :status, 1,"
            " 1.0, 0, 3, false, :result, 0)"),
            {"id": job_id, "seq": abs(hash(job_id)) % 1000, "input": request if isinstance(request, str) else
             json.dumps(request), "status": status, "result": None if result is None else json.dumps(result)})
    engine.dispose()


def _raw(db, job_id: str) -> tuple:  # noqa: ANN001
    engine = _engine(db)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT input, result FROM jobs WHERE id = :id"), {"id": job_id}).one()
    engine.dispose()
    return row


def test_rows_of_the_old_shapes_are_read_typed_after_the_upgrade(db_path):
    upgrade_database(db_path, "0005")
    _insert(db_path, "done", OLD_REQUEST, OLD_RESULT)
    _insert(db_path, "waiting", {"prompt": "a man img", "image_archive_url": "https://example.com/q.zip"}, None,
            status="queued")
    _insert(db_path, "odd", "not json at all", None)  # left as it is
    with SQLJobStore(db_path) as store:
        done = store.get("done")
        assert done.input.image_archive_url == FileRef.outside("https://example.com/me.zip")
        assert done.input.initial_image_url == FileRef.outside(DATA_URI)
        # a URL of this deployment's storage stays a URL: the migration cannot know the storage's address
        assert done.input.image_urls == [FileRef.outside("https://example.com/a.png"),
                                         FileRef.outside("http://h/files/t/b.png")]
        assert (done.input.num_images, done.input.photomaker_version, done.input.output_format,
                done.input.sync_mode) == (2, "v2", "webp", True)
        files = [image.file for image in done.result.images]
        assert files == [FileRef.stored("tok/a.png"), FileRef.outside(DATA_URI),
                         FileRef.outside("http://127.0.0.1:8000/files/old/c.png")]
        assert done.result.images[0].file_name == "x.png" and done.result.timings == {"total": 1.5}
        assert done.result.demo_warning == "noise"
        claimed = store.claim("w", 30)
        assert claimed.id == "waiting" and claimed.input.image_archive_url.url == "https://example.com/q.zip"
    assert _raw(db_path, "odd")[0] == "not json at all"


def test_the_upgrade_converts_each_row_once_and_downgrade_restores_the_old_shapes(db_path):
    upgrade_database(db_path, "0005")
    _insert(db_path, "done", OLD_REQUEST, OLD_RESULT)
    upgrade_database(db_path)
    typed_input, typed_result = _raw(db_path, "done")
    assert json.loads(typed_input)["image_urls"][0] == {"url": "https://example.com/a.png"}
    assert json.loads(typed_result)["images"][0]["file"] == {"key": "tok/a.png"}
    engine = _engine(db_path)
    try:
        with engine.begin() as conn:
            config = _config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0005")
    finally:
        engine.dispose()
    assert current_revision(db_path) == "0005"
    old_input, old_result = _raw(db_path, "done")
    assert json.loads(old_input) == OLD_REQUEST and json.loads(old_result) == OLD_RESULT


def test_the_conversions_leave_converted_and_foreign_values_alone():
    spec = importlib.util.spec_from_file_location("m0006", SCRIPT_LOCATION / "versions" / "0006_typed_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    typed = module.request_to_refs(OLD_REQUEST)
    assert module.request_to_refs(typed) == typed  # idempotent
    assert module.request_from_refs(typed) == OLD_REQUEST
    assert module.output_to_refs(module.output_to_refs(OLD_RESULT)) == module.output_to_refs(OLD_RESULT)
    for odd in (None, [], "x", {"images": "no"}, {"image_urls": None}):
        assert module.request_to_refs(odd) == odd and module.output_to_refs(odd) == odd
    assert JobStatus.COMPLETED.value == "completed"
