"""Schema migrations on SQLite and PostgreSQL: fresh databases, databases of the SQLite-only release (stamped as
revision 0001), older revisions, databases from a newer release (refused), and many processes opening a fresh
database at the same moment."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from helpers import stored_request
from photomaker_server.contract.files import FileRef
from photomaker_server.jobs.factory import open_job_store
from photomaker_server.jobs.records import JobStatus, SchemaTooNew
from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.jobs.sql.connect import database_url
from photomaker_server.jobs.sql.schema_version import (
    LEGACY_REVISION,
    current_revision,
    head_revision,
    upgrade_database,
)

LEGACY_DUMP = Path(__file__).parent / "data" / "legacy_v0_sqlite.sql"
LEGACY_DONE = "e3e4453e-5568-4a6a-86c3-f09a15d933b1"  # completed, with an undelivered webhook
LEGACY_QUEUED = "87dfe9f5-eace-4497-b7a3-81a7159c2301"


def _engine(db) -> sa.Engine:  # noqa: ANN001
    return sa.create_engine(database_url(db), poolclass=sa.pool.NullPool)


def _schema(db) -> dict:  # noqa: ANN001
    """Tables → (columns with type and nullability, indexes, foreign keys), as the database reports them."""
    engine = _engine(db)
    try:
        inspector = sa.inspect(engine)
        out = {}
        for table in sorted(t for t in inspector.get_table_names() if t != "alembic_version"):
            columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
            indexes = sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table))
            fks = [(f["referred_table"], tuple(f["constrained_columns"]), f["options"].get("ondelete"))
                   for f in inspector.get_foreign_keys(table)]
            out[table] = (columns, indexes, fks)
        return out
    finally:
        engine.dispose()


def _legacy_db(path: Path) -> Path:
    with sqlite3.connect(path) as raw:
        raw.executescript(LEGACY_DUMP.read_text())
    return path


def test_a_fresh_database_is_created_at_the_head_revision(db_path):
    assert current_revision(db_path) is None
    assert upgrade_database(db_path) == (None, head_revision())
    assert current_revision(db_path) == head_revision()
    assert upgrade_database(db_path) == (head_revision(), head_revision())  # nothing left to do
    assert {"jobs", "job_logs", "webhook_deliveries", "workers", "secrets"} <= set(_schema(db_path))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_revision_1_is_the_schema_of_the_sqlite_only_release(tmp_path, db_path):
    legacy = _legacy_db(tmp_path / "legacy.db")
    upgrade_database(db_path, LEGACY_REVISION)
    assert current_revision(db_path) == LEGACY_REVISION
    assert _schema(db_path) == _schema(legacy)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_database_of_the_sqlite_only_release_is_stamped_and_upgraded(db_path):
    _legacy_db(db_path)
    assert current_revision(db_path) is None
    with SQLJobStore(db_path) as store:
        assert current_revision(db_path) == head_revision()
        done = store.get(LEGACY_DONE)
        assert done.status == JobStatus.COMPLETED and done.result.seed == 1
        # the release's shapes, typed by migration 0006: an image by URL, request files as references
        assert done.result.images[0].file == FileRef.outside("http://127.0.0.1:8000/files/tok/e3e4453e-0.png")
        assert done.input.image_archive_url == FileRef.outside("https://example.com/a.zip")
        queued = store.get(LEGACY_QUEUED)
        assert queued.input.image_archive_url.is_data_uri
        assert queued.input.image_urls == [FileRef.outside("https://example.com/b.png")]
        (delivery,) = store.webhook_deliveries(LEGACY_DONE)  # the outbox row survived the rebuilt table
        assert delivery.url == "https://example.com/hook" and not delivery.given_up
        assert [line.message for line in store.logs(LEGACY_QUEUED)] == ["Request queued"]
        newer = store.submit("carol", "fal-ai/photomaker", stored_request(), priority="high")
        assert store.queue_position(store.get(newer.id)) == 1  # behind the older high-priority job
        assert store.claim("w", 30).id == LEGACY_QUEUED


def test_an_older_revision_is_upgraded_with_its_data(db_path):
    upgrade_database(db_path, LEGACY_REVISION)
    engine = _engine(db_path)
    with engine.begin() as conn:  # a job written at revision 0001, with a high seq
        conn.execute(sa.text(
            "INSERT INTO jobs (id, seq, owner, app, input, status, priority, created_at, attempts, max_attempts,"
            " cancel_requested) VALUES ('old-job', 41, 'alice', 'app',"
            " '{\"prompt\": \"a man img\", \"image_archive_url\": \"https://example.com/a.zip\"}',"
            " 'queued', 1, 1.0, 0, 3, false)"
        ))
    engine.dispose()
    with SQLJobStore(db_path, clock=lambda: 1.0) as store:
        assert current_revision(db_path) == head_revision()
        new = store.submit("alice", "app", stored_request())
        assert store.queue_position(store.get(new.id)) == 1  # same created_at: seq (42) orders it after
        assert [store.claim("w", 30).id for _ in range(2)] == ["old-job", new.id]


def test_a_database_from_a_newer_release_is_refused(db_path):
    upgrade_database(db_path)
    engine = _engine(db_path)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew) as info:
        open_job_store(db_path)
    message = str(info.value)
    assert "9999" in message and head_revision() in message and "upgrade the software" in message
    assert current_revision(db_path) == "9999"  # untouched


def _open_in_process(db: str, start, queue) -> None:  # noqa: ANN001
    """Child process body (spawned): open the store the moment every sibling is ready."""
    start.wait()
    try:
        with SQLJobStore(db) as store:
            store.submit("alice", "app", stored_request())
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_first_opens_do_not_fail(db_path):
    n = 4
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(n)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_in_process, args=(str(db_path), start, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert outcomes == ["ok"] * n
    assert current_revision(db_path) == head_revision()
    with SQLJobStore(db_path) as store:
        assert store.counts()["queued"] == n
