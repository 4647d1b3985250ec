"""open_job_store: the one place a database setting becomes a store."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from helpers import stored_request
from photomaker_server.jobs.factory import open_job_store
from photomaker_server.jobs.sql.connect import database_url


def test_paths_and_sqlite_urls_open_sqlite(tmp_path):
    for target in (tmp_path / "a" / "jobs.db", str(tmp_path / "b.db"), f"sqlite:///{tmp_path / 'c' / 'jobs.db'}"):
        store = open_job_store(target)
        try:
            assert store.dialect == "sqlite"
            assert store.get(store.submit("alice", "app", stored_request()).id) is not None
        finally:
            store.close()
    assert (tmp_path / "c" / "jobs.db").is_file()


def test_postgres_urls_use_psycopg_3():
    for text in ("postgresql://u:p@db.example/jobs", "postgres://u:p@db.example/jobs",
                 "postgresql+psycopg://u:p@db.example/jobs"):
        url = database_url(text)
        assert url.drivername == "postgresql+psycopg" and url.host == "db.example" and url.database == "jobs"
        assert url.password == "p"


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "redis://h"])
def test_unsupported_urls_are_refused(bad):
    with pytest.raises(ValueError, match="unsupported database"):
        open_job_store(bad)


def test_a_plain_postgresql_url_opens_postgresql(pg_server):
    url = pg_server.create_database()
    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    assert plain.startswith("postgresql://")
    topics: list[str] = []
    store = open_job_store(plain, publish=topics.append)
    try:
        assert store.dialect == "postgresql"
        job = store.submit("alice", "app", stored_request())
        assert store.get(job.id).input == stored_request() and "work" in topics
    finally:
        store.close()
        pg_server.drop_database(url)
